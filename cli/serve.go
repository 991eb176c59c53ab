package cli

import (
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/thingline/thingline/certmon"
	"github.com/thingline/thingline/gateway"
	"github.com/thingline/thingline/node"
)

func init() { register(newServeCmd) }

func newServeCmd() *cobra.Command {
	var cfg node.Config
	var cnRegex string
	var noCreate, disconnectOnBadInput bool
	var maxPayload int
	c := &cobra.Command{
		Use:   "serve",
		Short: "Run a cloud node: the TLS device gateway, the REST API and storage",
		Long: `Run a cloud node: the mTLS MQTT device gateway speaking ThingsBoard's device
API, the REST API and storage.

On embedded defaults it keeps everything in the data directory: SQLite,
an in-process bus, and a development PKI made on first start (a root CA,
a device-issuing intermediate CA and a server certificate for localhost
and 127.0.0.1). An admin API token is made and printed once unless given
with --admin-token or THINGLINE_ADMIN_TOKEN.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if cfg.AdminToken == "" {
				cfg.AdminToken = os.Getenv("THINGLINE_ADMIN_TOKEN")
			}
			cfg.Profile = gateway.Profile{
				Name:                 "default",
				CNRegex:              cnRegex,
				AllowCreate:          !noCreate,
				DisconnectOnBadInput: disconnectOnBadInput,
				MaxPayload:           maxPayload,
			}
			cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
			cfg.Out = cmd.ErrOrStderr()
			n, err := node.Start(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			devAddr, note := n.DeviceAddr()
			fmt.Fprintf(cmd.ErrOrStderr(), "thingline: devices connect to mqtts://%s, API at http://%s\n", devAddr, n.HTTPAddr())
			if note != "" {
				fmt.Fprintf(cmd.ErrOrStderr(), "thingline: %s\n", note)
			}
			werr := n.Wait(cmd.Context())
			cerr := n.Close()
			if werr != nil {
				return werr
			}
			return cerr
		},
	}
	f := c.Flags()
	f.StringVar(&cfg.DataDir, "data", "./thingline-data", "data directory")
	f.StringVar(&cfg.MQTTListen, "mqtt-listen", ":8883", "device listener (MQTT over TLS)")
	f.StringVar(&cfg.HTTPListen, "http-listen", "127.0.0.1:8080", "REST API listener")
	f.StringVar(&cfg.TLSCert, "tls-cert", "", "server certificate chain (PEM); default: the development PKI's")
	f.StringVar(&cfg.TLSKey, "tls-key", "", "server private key (PEM)")
	f.StringArrayVar(&cfg.DeviceCAs, "device-ca", nil, "device-issuing CA certificate (PEM) devices must chain to; repeatable")
	f.StringVar(&cfg.AdminToken, "admin-token", "", "admin API token (or THINGLINE_ADMIN_TOKEN)")
	f.StringVar(&cfg.StoreURL, "store", "", "storage: empty for SQLite in the data directory, or postgres://…")
	f.StringVar(&cfg.BusURL, "bus", "", "bus: empty for in-process, or nats://…[?prefix=NAME] to share with other nodes (NAME: this deployment's subject prefix, default thingline)")
	f.StringVar(&cfg.NodeID, "node-id", "", "this node's name (default: host name)")
	f.StringVar(&cnRegex, "cn-regex", "(.*)", "device name = first capture group of this expression on the certificate CN")
	f.BoolVar(&noCreate, "no-auto-provision", false, "refuse devices not already known instead of creating them")
	f.BoolVar(&disconnectOnBadInput, "disconnect-on-bad-input", false, "MQTT 3.1.1: close the session on a refused message instead of acknowledging and dropping it")
	f.DurationVar(&cfg.APIBodyTimeout, "api-body-timeout", 30*time.Second, "longest time a REST request body may take to arrive")
	g := &cfg.Gateway
	f.IntVar(&g.MaxConnsPerAddr, "max-conns-per-addr", gateway.DefaultMaxConnsPerAddr, "device connections one source address may hold at once (a NAT gateway is one address)")
	f.IntVar(&g.MaxHandshakesPerAddr, "max-handshakes-per-addr", gateway.DefaultMaxHandshakesPerAddr, "TLS handshakes one source address may have in progress at once")
	f.IntVar(&g.HandshakeRatePerAddr, "handshake-rate-per-addr", gateway.DefaultHandshakeRatePerAddr, "new device connections a second from one source address (bursts of twice that)")
	f.DurationVar(&g.HelloTimeout, "hello-timeout", gateway.DefaultHelloTimeout, "time from accepting a device connection to its first TLS byte")
	f.DurationVar(&g.IdleLimit, "idle-limit", gateway.DefaultIdleLimit, "a session without keep-alive is closed after this long without a packet")
	f.IntVar(&g.TakeoversPerMinute, "takeovers-per-minute", gateway.DefaultTakeoversPerMinute, "takeovers of one device's session allowed a minute; more are refused")
	f.DurationVar(&g.MaxTimestampAhead, "max-ts-ahead", gateway.DefaultMaxTimestampAhead, "telemetry stamped further ahead of the server's clock is refused")
	f.DurationVar(&g.MaxTimestampAge, "max-ts-age", 0, "telemetry stamped further behind the server's clock is refused (0: no bound)")
	addOperationFlags(f, &cfg)
	f.IntVar(&maxPayload, "max-payload", 65536, "largest accepted PUBLISH payload in bytes")
	f.StringVar(&cfg.DeviceCAKey, "device-ca-key", "", "key of the first --device-ca: makes it the online issuing CA for certificate rotation and the server's CRL")
	f.DurationVar(&cfg.Gateway.RotationGrace, "rotation-grace", gateway.DefaultRotationGrace, "how long a certificate replaced by a rotation stays valid before it is revoked")
	f.DurationVar(&cfg.CertMonitor.Threshold, "cert-expiry-threshold", certmon.DefaultThreshold, "raise the certificate-expiring alarm when a device's certificate expires within this")
	f.DurationVar(&cfg.CertMonitor.ExpiryEvery, "cert-expiry-every", certmon.DefaultExpiryEvery, "how often certificate expiry is checked")
	return c
}
