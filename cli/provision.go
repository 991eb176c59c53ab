package cli

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/thingline/thingline/protocomm"
	"github.com/thingline/thingline/protocomm/ble"
	"github.com/thingline/thingline/protocomm/httpd"
	"github.com/thingline/thingline/wifiprov"
)

func init() { register(newProvisionCmd) }

func newProvisionCmd() *cobra.Command {
	var (
		transport, service string
		sec                int
		pop, user, pass    string
		ssid, passphrase   string
		scan               bool
		custom             []string
		timeout, pollEvery time.Duration
		serviceUUID        string
		owner              ownerFlow
		userToken, apiURL  string
	)
	c := &cobra.Command{
		Use:   "provision",
		Short: "Provision a device's Wi-Fi over Espressif's protocol, as esp_prov or the phone apps do",
		Long: `provision plays the phone app's part of ESP-IDF Wi-Fi provisioning
against a device (or a device twin): protocol version, secure session
(security 0, 1 with a proof of possession, or 2 with SRP username and
password), optional custom data and scan, then the credentials, and waits
until the device has joined the network or failed.

With --user-token and --api it also does the app's part of ownership: it
asks the cloud whose device this is (yours, unowned, someone else's), hands
the device your user id and a one-time secret over the cloud_user_assoc
endpoint before the credentials, and once the device is online claims it
with the same secret (POST /api/v1/claims).`,
		Example: `  thingline provision --transport softap --service 192.168.4.1:80 --sec 1 --pop abcd1234 --ssid home --passphrase secret
  thingline provision --transport ble --service PROV_1A2B3C --sec 2 --sec2-user wifiprov --sec2-pass abcd1234 --ssid home --passphrase secret
  thingline provision --service 192.168.4.1:80 --pop abcd1234 --ssid home --passphrase secret --user-token tls_… --api https://cloud.example`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if ssid == "" {
				return errors.New("provision: --ssid is required")
			}
			var cd []wifiprov.CustomData
			for _, kv := range custom {
				ep, data, ok := strings.Cut(kv, "=")
				if !ok || ep == "" {
					return fmt.Errorf("provision: --custom %q: want ENDPOINT=DATA", kv)
				}
				cd = append(cd, wifiprov.CustomData{Endpoint: ep, Data: []byte(data)})
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			out := cmd.OutOrStdout()
			var before func(context.Context, *wifiprov.Client) error
			if userToken != "" || apiURL != "" {
				if userToken == "" || apiURL == "" {
					return errors.New("provision: --user-token and --api go together")
				}
				owner.api.server, owner.api.token, owner.out = apiURL, userToken, out
				before = owner.beforeCredentials
			}

			var t protocomm.Transport
			switch transport {
			case "softap", "httpd":
				if service == "" {
					service = "192.168.4.1:80"
				}
				hc := httpd.NewClient(service)
				defer hc.Close()
				t = hc
			case "ble":
				if service == "" {
					return errors.New("provision: --service must name the BLE device (PROV_xxxxxx)")
				}
				bc, err := ble.Dial(ctx, service, ble.DialOptions{ServiceUUID: serviceUUID})
				if err != nil {
					return fmt.Errorf("provision: %w", err)
				}
				defer bc.Close()
				t = bc
			default:
				return fmt.Errorf("provision: unknown transport %q (softap or ble)", transport)
			}
			fmt.Fprintf(out, "connecting to %s over %s\n", service, transport)
			o, err := wifiprov.Run(ctx, t, wifiprov.Options{
				Credentials: wifiprov.Credentials{Security: sec, PoP: pop, Username: user, Password: pass},
				SSID:        ssid, Passphrase: passphrase, Scan: scan, Custom: cd,
				PollInterval: pollEvery, BeforeCredentials: before,
				Progress: func(format string, args ...any) {
					fmt.Fprintf(out, format+"\n", args...)
				},
			})
			for _, ap := range o.Networks {
				fmt.Fprintf(out, "  %-32q ch %-3d %4d dBm %s\n", ap.SSID, ap.Channel, ap.RSSI, ap.Auth)
			}
			if err != nil {
				var fe *wifiprov.FailedError
				if errors.As(err, &fe) {
					return &exitError{code: 2, err: fmt.Errorf("provision: device could not join %q: %s", ssid, fe.Status.Reason)}
				}
				return fmt.Errorf("provision: %w", err)
			}
			fmt.Fprintf(out, "provisioned: %s\n", o.Status)
			if before != nil {
				return owner.claim(ctx, pollEvery)
			}
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&transport, "transport", "softap", "softap (HTTP) or ble")
	f.StringVar(&service, "service", "", "HOST:PORT for softap (default 192.168.4.1:80), device name for ble")
	f.StringVar(&serviceUUID, "ble-service-uuid", ble.DefaultServiceUUID, "BLE provisioning service UUID")
	f.IntVar(&sec, "sec", wifiprov.SecurityAuto, "security scheme 0, 1 or 2; -1 takes what the device announces")
	f.StringVar(&pop, "pop", "", "proof of possession (security 1)")
	f.StringVar(&user, "sec2-user", "", "SRP username (security 2)")
	f.StringVar(&pass, "sec2-pass", "", "SRP password (security 2)")
	f.StringVar(&ssid, "ssid", "", "network to join")
	f.StringVar(&passphrase, "passphrase", "", "network passphrase")
	f.BoolVar(&scan, "scan", false, "list the networks the device sees first")
	f.StringArrayVar(&custom, "custom", nil, "ENDPOINT=DATA sent to a custom endpoint after the session is up (repeatable)")
	f.DurationVar(&timeout, "timeout", 2*time.Minute, "give up after this long")
	f.StringVar(&userToken, "user-token", "", "the user's API or session token: associate the device with that user")
	f.StringVar(&apiURL, "api", "", "the cloud's API base URL, with --user-token")
	f.StringVar(&owner.api.caFile, "api-ca-file", "", "PEM bundle that verifies an https --api")
	f.DurationVar(&pollEvery, "poll", time.Second, "interval between status requests")
	return c
}
