package cli

import (
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"os/signal"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/thingline/thingline/protocomm/ble"
	"github.com/thingline/thingline/twin"
)

func init() { register(newDeviceCmd) }

func newDeviceCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "device",
		Short: "Run a device twin: the ESP32 firmware emulated on the factory's SPIFFS image",
	}
	c.AddCommand(newDeviceRunCmd(), newDeviceResetCmd(), newDeviceCredentialsCmd(), newDeviceRevokeCmd())
	return c
}

// consoleLogger is the twin's UART: timestamped lines, safe for concurrent use.
func consoleLogger(w io.Writer) func(string, ...any) {
	var mu sync.Mutex
	l := log.New(w, "", log.Ltime|log.Lmicroseconds)
	return func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		l.Printf(format, args...)
	}
}

func newDeviceRunCmd() *cobra.Command {
	var (
		cfg          twin.Config
		networksFile string
	)
	c := &cobra.Command{
		Use:   "run",
		Short: "Boot a twin from a SPIFFS image, provision it and stream telemetry",
		Long: `run boots a device twin as the seed firmware boots: it mounts the SPIFFS
image read-only, loads device.crt, device.key, server_chain.pem and prov.json,
and loads its NVS equivalent from --state (state.json).

Not yet provisioned, it serves Espressif's protocomm provisioning as
PROV_XXXXXX over HTTP (--prov softap, the SoftAP transport) or BLE (--prov
ble, through BlueZ), with security 0, 1 (the PoP from prov.json unless --pop)
or 2 (user from prov.json, password the PoP, unless --sec2-user/--sec2-pass).
The Wi-Fi is simulated: --wifi-networks lists the networks (JSON array or
lines "ssid | passphrase | rssi | channel | auth"); without it any SSID with
a valid passphrase joins.

Provisioned, it connects to --broker over TLS with its certificate, checks
the server against server_chain.pem, publishes {"temperature","humidity"} to
v1/devices/me/telemetry every --interval, answers the RPCs getState,
setInterval, reboot and factoryReset, and applies the shared attribute
interval. SIGUSR1 is the reset button: a factory reset.`,
		Example: `  thingline device run --spiffs out/SN-000001/spiffs.bin --state st1 --broker mqtts://localhost:8883
  thingline device run --spiffs spiffs.bin --state st1 --broker mqtts://127.0.0.1:8883 --prov softap --prov-listen 127.0.0.1:8080 --sec 2`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cfg.SPIFFS == "" || cfg.StateDir == "" || cfg.Broker == "" {
				return errors.New("device run: --spiffs, --state and --broker are required")
			}
			cfg.SecSet = cmd.Flags().Changed("sec")
			if networksFile != "" {
				nets, err := twin.LoadNetworks(networksFile)
				if err != nil {
					return err
				}
				cfg.Networks = nets
			}
			cfg.Logf = consoleLogger(cmd.OutOrStdout())
			t, err := twin.New(cfg)
			if err != nil {
				return err
			}
			usr1 := make(chan os.Signal, 1)
			if len(resetSignals) > 0 { // none would mean every signal
				signal.Notify(usr1, resetSignals...)
				defer signal.Stop(usr1)
			}
			ctx := cmd.Context()
			go func() {
				for {
					select {
					case <-usr1:
						cfg.Logf("SIGUSR1: factory reset")
						if err := t.FactoryReset(); err != nil {
							cfg.Logf("factory reset: %v", err)
						}
					case <-ctx.Done():
						return
					}
				}
			}()
			err = t.Run(ctx)
			if errors.Is(err, ble.ErrNoAdapter) {
				return fmt.Errorf("device run: BLE provisioning needs a Bluetooth adapter and BlueZ (use --prov softap): %w", err)
			}
			if err == nil {
				cfg.Logf("stopped")
			}
			return err
		},
	}
	f := c.Flags()
	f.StringVar(&cfg.SPIFFS, "spiffs", "", "SPIFFS image the twin boots from (the factory's spiffs.bin)")
	f.StringVar(&cfg.StateDir, "state", "", "directory of the persisted state (the twin's NVS)")
	f.StringVar(&cfg.Broker, "broker", "", "cloud address, mqtts://HOST:PORT; several, comma-separated, are tried in turn when one cannot be reached")
	f.StringVar(&cfg.ServerName, "server-name", "", "name the server certificate must carry (default: the broker's host)")
	f.StringVar(&cfg.Prov, "prov", twin.ProvSoftAP, "provisioning transport: softap, ble or none")
	f.StringVar(&cfg.ProvListen, "prov-listen", "127.0.0.1:0", "softap: HTTP address of the provisioning service")
	f.IntVar(&cfg.Sec, "sec", 1, "protocomm security scheme: 0, 1 or 2")
	f.StringVar(&cfg.PoP, "pop", "", "proof of possession (default: the image's prov.json)")
	f.StringVar(&cfg.Sec2User, "sec2-user", "", "security 2 username (default: the image's prov.json)")
	f.StringVar(&cfg.Sec2Pass, "sec2-pass", "", "security 2 password (default: the PoP)")
	f.StringVar(&networksFile, "wifi-networks", "", "simulated Wi-Fi networks file (JSON or text)")
	f.DurationVar(&cfg.Interval, "interval", time.Second, "telemetry period")
	f.DurationVar(&cfg.Keepalive, "keepalive", 120*time.Second, "MQTT keepalive")
	f.DurationVar(&cfg.BackoffMax, "backoff-max", time.Minute, "longest delay between reconnection attempts")
	f.DurationVar(&cfg.AttrEvery, "uptime-every", time.Minute, "period of the uptime client attribute")
	f.DurationVar(&cfg.RotateWithin, "rotate-within", twin.DefaultRotateWithin, "ask the cloud for a new certificate when the current one expires within this (0: never)")
	f.StringVar(&cfg.ClaimSecret, "claim-secret", "", "publish a claim request (v1/devices/me/claim) with this secret key once connected")
	f.StringSliceVar(&cfg.RPC.Ignore, "rpc-ignore", nil, "server-side RPC methods acknowledged and never answered (firmware that hangs), for tests")
	f.StringSliceVar(&cfg.RPC.Fail, "rpc-fail", nil, "server-side RPC methods answered with an error, for tests")
	f.DurationVar(&cfg.ClaimWindow, "claim-window", 10*time.Minute, "how long the claim request stays open")
	f.StringVar(&cfg.FirmwareVersion, "fw-version", twin.DefaultFirmwareVersion, "firmware version reported when the state names none")
	f.StringVar(&cfg.OTAFail, "ota-fail", "", "make firmware updates fail, for tests: download, verify, reboot (once, mid-download) or silent")
	f.StringVar(&cfg.Names.Cert, "cert-name", "device.crt", "certificate file in the image")
	f.StringVar(&cfg.Names.Key, "key-name", "device.key", "private key file in the image")
	f.StringVar(&cfg.Names.Chain, "chain-name", "server_chain.pem", "CA chain file in the image")
	f.StringVar(&cfg.Names.Prov, "prov-name", "prov.json", "provisioning secrets file in the image")
	return c
}

func newDeviceResetCmd() *cobra.Command {
	var dir string
	c := &cobra.Command{
		Use:   "reset",
		Short: "Factory-reset a stopped twin: clear Wi-Fi and runtime state, keep its identity",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if dir == "" {
				return errors.New("device reset: --state is required")
			}
			if err := twin.ResetState(dir); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: Wi-Fi and runtime state cleared; the identity in the SPIFFS image is kept\n", dir)
			return nil
		},
	}
	c.Flags().StringVar(&dir, "state", "", "state directory of the twin")
	return c
}
