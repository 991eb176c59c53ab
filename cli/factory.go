package cli

import "github.com/spf13/cobra"

// factoryCommands holds the subcommands of `thingline factory`, one per
// station or report. Files named factory_*.go add theirs with
// registerFactory from an init function.
var factoryCommands []func() *cobra.Command

func registerFactory(newCmd func() *cobra.Command) {
	factoryCommands = append(factoryCommands, newCmd)
}

func init() {
	register(func() *cobra.Command {
		c := &cobra.Command{
			Use:   "factory",
			Short: "Shopfloor stations: inject identities, flash, test, label, and the unit ledger",
		}
		for _, f := range factoryCommands {
			c.AddCommand(f())
		}
		return c
	})
}
