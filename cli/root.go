// Package cli holds thingline's command tree. Each command group lives in its
// own file and registers itself with register from an init function, so that
// the groups never have to edit a shared list.
package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"sort"
	"syscall"

	"github.com/spf13/cobra"
)

var commands []func() *cobra.Command

// register adds a top-level command constructor. It is called from init
// functions only.
func register(newCmd func() *cobra.Command) { commands = append(commands, newCmd) }

// exitError carries a specific exit status out of a command.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// NewRoot builds the full command tree.
func NewRoot() *cobra.Command {
	root := &cobra.Command{
		Use:           "thingline",
		Short:         "Factory, cloud and device twin for X.509-identified ESP32 devices",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	var cmds []*cobra.Command
	for _, c := range commands {
		cmds = append(cmds, c())
	}
	sort.Slice(cmds, func(i, j int) bool { return cmds[i].Name() < cmds[j].Name() })
	root.AddCommand(cmds...)
	strictGroups(root)
	return root
}

// strictGroups makes every command group (a command with subcommands and
// nothing to run of its own) runnable with no arguments, showing its help:
// cobra otherwise shows the help and exits 0 for a mistyped subcommand
// ("thingline factory injet"), which scripts cannot tell from success.
// With NoArgs, the typo is an "unknown command" error and exit status 1.
func strictGroups(c *cobra.Command) {
	for _, sub := range c.Commands() {
		strictGroups(sub)
	}
	if c.HasSubCommands() && c.Run == nil && c.RunE == nil {
		c.Args = cobra.NoArgs
		c.RunE = func(cmd *cobra.Command, _ []string) error { return cmd.Help() }
	}
}

// Main runs thingline with args and returns the process exit status.
// SIGINT and SIGTERM cancel the command's context, so that long-running
// commands (serve, device run, demo) stop cleanly.
func Main(args []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := NewRoot()
	root.SetArgs(args)
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "thingline:", err)
		var ee *exitError
		if errors.As(err, &ee) {
			return ee.code
		}
		return 1
	}
	return 0
}
