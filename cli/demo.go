package cli

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/thingline/thingline/demo"
)

func init() { register(newDemoCmd) }

func newDemoCmd() *cobra.Command {
	var opt demo.Options
	c := &cobra.Command{
		Use:   "demo",
		Short: "The whole life on one machine: cloud, factory and provisioned device twins streaming",
		Long: `demo runs the whole life of thingline devices on this machine, on embedded
defaults: it starts a cloud node (SQLite, in-process bus, development PKI),
injects units with the node's device CA as the factory does, boots one
device twin per unit from its SPIFFS image, provisions each over Espressif's
protocomm protocol (SoftAP transport on loopback, security 1 with the PoP
from the unit's label), waits until every unit is auto-provisioned in the
cloud and streaming, prints the API address, the admin token and curl
commands to paste, and then prints the latest values once a second.

Ctrl-C stops the twins, then the node, and prints a summary. --dir is kept
across runs: the node's data, its PKI and admin token, and the units are
reused (more are injected when --units grows, continuing the ledger's
serial numbers); each run resets the twins' Wi-Fi so that provisioning is
shown again.`,
		Example: `  thingline demo
  thingline demo --units 3 --duration 30s --http-listen 127.0.0.1:0 --mqtt-listen 127.0.0.1:0`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if opt.Units < 1 || opt.Units > demo.MaxUnits {
				return fmt.Errorf("demo: --units %d: want 1 to %d", opt.Units, demo.MaxUnits)
			}
			return demo.Run(cmd.Context(), opt, cmd.OutOrStdout())
		},
	}
	f := c.Flags()
	f.StringVar(&opt.Dir, "dir", "./"+demo.DefaultDir, "directory of the demo's state, reused across runs")
	f.IntVar(&opt.Units, "units", demo.DefaultUnits, "how many units to run")
	f.DurationVar(&opt.Duration, "duration", 0, "stop after streaming this long (0: until Ctrl-C)")
	f.StringVar(&opt.HTTPListen, "http-listen", demo.DefaultHTTPListen, "REST API listener (an ephemeral port is used when taken)")
	f.StringVar(&opt.MQTTListen, "mqtt-listen", demo.DefaultMQTTListen, "device listener, MQTT over TLS (an ephemeral port is used when taken)")
	f.DurationVar(&opt.Interval, "interval", time.Second, "twins' telemetry period")
	return c
}
