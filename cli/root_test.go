package cli

import (
	"bytes"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// TestEveryGroupRefusesUnknownSubcommands: a mistyped subcommand of any
// command group is an error (exit status 1), never a help page and 0.
func TestEveryGroupRefusesUnknownSubcommands(t *testing.T) {
	root := NewRoot()
	var groups []*cobra.Command
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if c.HasSubCommands() {
			groups = append(groups, c)
		}
		for _, s := range c.Commands() {
			walk(s)
		}
	}
	walk(root)
	if len(groups) < 4 {
		t.Fatalf("only %d command groups found", len(groups))
	}
	for _, g := range groups {
		path := strings.Fields(g.CommandPath())[1:]
		r := NewRoot()
		var out bytes.Buffer
		r.SetOut(&out)
		r.SetErr(&out)
		r.SetArgs(append(path, "no-such-subcommand"))
		if err := r.Execute(); err == nil {
			t.Errorf("%q with a mistyped subcommand succeeded:\n%s", g.CommandPath(), out.String())
		}
	}
}

// TestFlagHelpLines: every flag's help line is well formed: a placeholder
// quoted with backticks in a usage string becomes the flag's value name,
// so it must be one word (as in "--unit DIR"), never a phrase.
func TestFlagHelpLines(t *testing.T) {
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		c.Flags().VisitAll(func(f *pflag.Flag) {
			name, usage := pflag.UnquoteUsage(f)
			if strings.ContainsAny(name, " \t") {
				t.Errorf("%s --%s: value name %q (from a quoted phrase in %q)", c.CommandPath(), f.Name, name, f.Usage)
			}
			if usage == "" {
				t.Errorf("%s --%s: no help text", c.CommandPath(), f.Name)
			}
		})
		for _, s := range c.Commands() {
			walk(s)
		}
	}
	walk(NewRoot())
}
