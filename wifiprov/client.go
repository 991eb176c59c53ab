package wifiprov

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/thingline/thingline/protocomm"
	"github.com/thingline/thingline/protocomm/pb"
	"github.com/thingline/thingline/protocomm/security"
)

// SecurityAuto lets the client pick the scheme from proto-ver.
const SecurityAuto = -1

// Info is the decoded proto-ver answer.
type Info struct {
	Version      string
	SecVer       int // -1 when the device did not say (old firmware)
	SecPatchVer  int
	Capabilities []string
	Raw          string
}

// HasCap reports whether the device announced capability c under "prov".
func (i Info) HasCap(c string) bool { return slices.Contains(i.Capabilities, c) }

// ParseInfo decodes a proto-ver answer. Old firmware answers a bare version
// string such as "V0.1", which is kept as Version.
func ParseInfo(raw []byte) Info {
	info := Info{SecVer: -1, Raw: string(raw)}
	var v struct {
		Prov struct {
			Ver         string   `json:"ver"`
			SecVer      *int     `json:"sec_ver"`
			SecPatchVer int      `json:"sec_patch_ver"`
			Cap         []string `json:"cap"`
		} `json:"prov"`
	}
	if err := json.Unmarshal(raw, &v); err != nil {
		info.Version = string(raw)
		return info
	}
	info.Version, info.SecPatchVer, info.Capabilities = v.Prov.Ver, v.Prov.SecPatchVer, v.Prov.Cap
	if v.Prov.SecVer != nil {
		info.SecVer = *v.Prov.SecVer
	}
	return info
}

// Credentials chooses and authenticates the security scheme.
type Credentials struct {
	Security int    // 0, 1, 2 or SecurityAuto
	PoP      string // security 1
	Username string // security 2
	Password string // security 2
}

// Client is the phone app's side of a provisioning session.
type Client struct {
	Info Info
	sess *protocomm.Session
	t    protocomm.Transport
}

// Connect asks proto-ver and establishes the secure session, as esp_prov
// does: with SecurityAuto, the device's sec_ver decides, and without one
// "no_sec" means 0 and anything else 1.
func Connect(ctx context.Context, t protocomm.Transport, cred Credentials) (*Client, error) {
	raw, err := protocomm.Version(ctx, t)
	if err != nil {
		return nil, fmt.Errorf("wifiprov: %w", err)
	}
	info := ParseInfo(raw)
	sec := cred.Security
	if sec == SecurityAuto {
		switch {
		case info.SecVer >= 0:
			sec = info.SecVer
		case info.HasCap("no_sec"):
			sec = 0
		default:
			sec = 1
		}
	}
	var sc security.Client
	switch sec {
	case 0:
		sc = security.NewClient0()
	case 1:
		pop := cred.PoP
		if info.HasCap("no_pop") {
			// As esp_prov: a PoP given for a device without one is ignored.
			pop = ""
		}
		sc = security.NewClient1([]byte(pop))
	case 2:
		if cred.Username == "" {
			return nil, errors.New("wifiprov: security 2 needs a username and password")
		}
		sc = security.NewClient2(cred.Username, cred.Password, info.SecPatchVer)
	default:
		return nil, fmt.Errorf("wifiprov: unknown security scheme %d", sec)
	}
	sess, err := protocomm.Dial(ctx, t, sc)
	if err != nil {
		return nil, fmt.Errorf("wifiprov: %w", err)
	}
	return &Client{Info: info, sess: sess, t: t}, nil
}

// Custom sends data to a custom endpoint and returns its answer.
func (c *Client) Custom(ctx context.Context, endpoint string, data []byte) ([]byte, error) {
	return c.sess.Call(ctx, endpoint, data)
}

func (c *Client) config(ctx context.Context, in *pb.WiFiConfigPayload) (*pb.WiFiConfigPayload, error) {
	req, err := proto.Marshal(in)
	if err != nil {
		return nil, fmt.Errorf("wifiprov: encoding: %w", err)
	}
	resp, err := c.sess.Call(ctx, EndpointConfig, req)
	if err != nil {
		return nil, fmt.Errorf("wifiprov: %w", err)
	}
	var out pb.WiFiConfigPayload
	if err := proto.Unmarshal(resp, &out); err != nil {
		return nil, fmt.Errorf("wifiprov: decoding %s answer: %w", EndpointConfig, err)
	}
	return &out, nil
}

// SetConfig sends the network credentials.
func (c *Client) SetConfig(ctx context.Context, ssid, passphrase string) error {
	out, err := c.config(ctx, &pb.WiFiConfigPayload{
		Msg: pb.WiFiConfigMsgType_TypeCmdSetConfig,
		Payload: &pb.WiFiConfigPayload_CmdSetConfig{CmdSetConfig: &pb.CmdSetConfig{
			Ssid: []byte(ssid), Passphrase: []byte(passphrase),
		}},
	})
	if err != nil {
		return err
	}
	if st := out.GetRespSetConfig().GetStatus(); st != pb.Status_Success {
		return fmt.Errorf("wifiprov: set config refused: %s", st)
	}
	return nil
}

// Apply makes the device connect with the credentials sent.
func (c *Client) Apply(ctx context.Context) error {
	out, err := c.config(ctx, &pb.WiFiConfigPayload{
		Msg:     pb.WiFiConfigMsgType_TypeCmdApplyConfig,
		Payload: &pb.WiFiConfigPayload_CmdApplyConfig{CmdApplyConfig: &pb.CmdApplyConfig{}},
	})
	if err != nil {
		return err
	}
	if st := out.GetRespApplyConfig().GetStatus(); st != pb.Status_Success {
		return fmt.Errorf("wifiprov: apply config refused: %s", st)
	}
	return nil
}

// Status asks the station status once.
func (c *Client) Status(ctx context.Context) (Status, error) {
	out, err := c.config(ctx, &pb.WiFiConfigPayload{
		Msg:     pb.WiFiConfigMsgType_TypeCmdGetStatus,
		Payload: &pb.WiFiConfigPayload_CmdGetStatus{CmdGetStatus: &pb.CmdGetStatus{}},
	})
	if err != nil {
		return Status{}, err
	}
	r := out.GetRespGetStatus()
	if r == nil {
		return Status{}, errors.New("wifiprov: get-status answer without status")
	}
	if r.Status != pb.Status_Success {
		return Status{}, fmt.Errorf("wifiprov: get-status: %s", r.Status)
	}
	s := Status{State: State(r.StaState), AttemptsRemaining: -1}
	if cs := r.GetConnected(); cs != nil {
		s.IP = cs.Ip4Addr
		s.AP = AP{SSID: string(cs.Ssid), BSSID: cs.Bssid, Channel: int(cs.Channel), Auth: AuthMode(cs.AuthMode)}
	}
	if _, ok := r.State.(*pb.RespGetStatus_FailReason); ok {
		s.Reason = FailReason(r.GetFailReason())
	}
	if af := r.GetAttemptFailed(); af != nil {
		s.AttemptsRemaining = int(af.AttemptsRemaining)
	}
	return s, nil
}

func (c *Client) scan(ctx context.Context, in *pb.WiFiScanPayload) (*pb.WiFiScanPayload, error) {
	req, err := proto.Marshal(in)
	if err != nil {
		return nil, fmt.Errorf("wifiprov: encoding: %w", err)
	}
	resp, err := c.sess.Call(ctx, EndpointScan, req)
	if err != nil {
		return nil, fmt.Errorf("wifiprov: %w", err)
	}
	var out pb.WiFiScanPayload
	if err := proto.Unmarshal(resp, &out); err != nil {
		return nil, fmt.Errorf("wifiprov: decoding %s answer: %w", EndpointScan, err)
	}
	if out.Status != pb.Status_Success {
		return nil, fmt.Errorf("wifiprov: scan: %s", out.Status)
	}
	return &out, nil
}

// Scan runs a blocking scan and reads the results perRequest at a time
// (esp_prov reads 4 over BLE because of the characteristic size).
func (c *Client) Scan(ctx context.Context, perRequest int) ([]AP, error) {
	if perRequest <= 0 {
		perRequest = 4
	}
	if _, err := c.scan(ctx, &pb.WiFiScanPayload{
		Msg:     pb.WiFiScanMsgType_TypeCmdScanStart,
		Payload: &pb.WiFiScanPayload_CmdScanStart{CmdScanStart: &pb.CmdScanStart{Blocking: true, GroupChannels: 5}},
	}); err != nil {
		return nil, err
	}
	var count uint32
	for {
		out, err := c.scan(ctx, &pb.WiFiScanPayload{
			Msg:     pb.WiFiScanMsgType_TypeCmdScanStatus,
			Payload: &pb.WiFiScanPayload_CmdScanStatus{CmdScanStatus: &pb.CmdScanStatus{}},
		})
		if err != nil {
			return nil, err
		}
		if st := out.GetRespScanStatus(); st.GetScanFinished() {
			count = st.GetResultCount()
			break
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	var aps []AP
	for idx := uint32(0); idx < count; {
		n := min(uint32(perRequest), count-idx)
		out, err := c.scan(ctx, &pb.WiFiScanPayload{
			Msg:     pb.WiFiScanMsgType_TypeCmdScanResult,
			Payload: &pb.WiFiScanPayload_CmdScanResult{CmdScanResult: &pb.CmdScanResult{StartIndex: idx, Count: n}},
		})
		if err != nil {
			return nil, err
		}
		for _, e := range out.GetRespScanResult().GetEntries() {
			aps = append(aps, AP{SSID: string(e.Ssid), BSSID: e.Bssid, Channel: int(e.Channel), RSSI: int(e.Rssi), Auth: AuthMode(e.Auth)})
		}
		idx += n
	}
	return aps, nil
}

func (c *Client) ctrl(ctx context.Context, msg pb.WiFiCtrlMsgType, in *pb.WiFiCtrlPayload) error {
	in.Msg = msg
	req, err := proto.Marshal(in)
	if err != nil {
		return fmt.Errorf("wifiprov: encoding: %w", err)
	}
	resp, err := c.sess.Call(ctx, EndpointCtrl, req)
	if err != nil {
		return fmt.Errorf("wifiprov: %w", err)
	}
	var out pb.WiFiCtrlPayload
	if err := proto.Unmarshal(resp, &out); err != nil {
		return fmt.Errorf("wifiprov: decoding %s answer: %w", EndpointCtrl, err)
	}
	if out.Status != pb.Status_Success {
		return fmt.Errorf("wifiprov: %s: %s", msg, out.Status)
	}
	return nil
}

// Reset returns a device whose provisioning failed to waiting for
// credentials.
func (c *Client) Reset(ctx context.Context) error {
	return c.ctrl(ctx, pb.WiFiCtrlMsgType_TypeCmdCtrlReset,
		&pb.WiFiCtrlPayload{Payload: &pb.WiFiCtrlPayload_CmdCtrlReset{CmdCtrlReset: &pb.CmdCtrlReset{}}})
}

// Reprov starts re-provisioning of a device already provisioned.
func (c *Client) Reprov(ctx context.Context) error {
	return c.ctrl(ctx, pb.WiFiCtrlMsgType_TypeCmdCtrlReprov,
		&pb.WiFiCtrlPayload{Payload: &pb.WiFiCtrlPayload_CmdCtrlReprov{CmdCtrlReprov: &pb.CmdCtrlReprov{}}})
}

// WaitConnected polls the status every interval until the device connected
// or failed. A failure is returned as an error carrying the status.
func (c *Client) WaitConnected(ctx context.Context, interval time.Duration, progress func(Status)) (Status, error) {
	if interval <= 0 {
		interval = time.Second
	}
	for {
		s, err := c.Status(ctx)
		if err != nil {
			return s, err
		}
		if progress != nil {
			progress(s)
		}
		switch s.State {
		case Connected:
			return s, nil
		case ConnectionFailed, Disconnected:
			return s, &FailedError{Status: s}
		}
		select {
		case <-ctx.Done():
			return s, fmt.Errorf("wifiprov: waiting for the device to connect: %w", ctx.Err())
		case <-time.After(interval):
		}
	}
}

// FailedError is returned when the device could not join the network.
type FailedError struct{ Status Status }

func (e *FailedError) Error() string { return "wifiprov: " + e.Status.String() }

// CustomData is one request to a custom endpoint made during Provision.
type CustomData struct {
	Endpoint string
	Data     []byte
}

// Options drive Provision.
type Options struct {
	Credentials
	SSID, Passphrase string
	// Scan lists the networks before configuring; Networks in the result.
	Scan bool
	// ScanPerRequest is how many results to read per request (4 by default).
	ScanPerRequest int
	Custom         []CustomData
	// PollInterval between get-status requests (1 s by default; esp_prov
	// uses 5 s).
	PollInterval time.Duration
	// Progress, when set, receives a line per step.
	Progress func(format string, args ...any)
	// BeforeCredentials, when set, runs after the session and the custom
	// data and before the credentials are sent: where an app associates
	// the device with its user (Client.Associate) and decides whether to
	// go on (an error stops the flow).
	BeforeCredentials func(ctx context.Context, c *Client) error
}

// Outcome is everything Provision learned.
type Outcome struct {
	Info     Info
	Networks []AP
	Custom   map[string][]byte
	Status   Status
}

// Provision runs the esp_prov flow (see Run) and returns the final status.
func Provision(ctx context.Context, t protocomm.Transport, opts Options) (Status, error) {
	o, err := Run(ctx, t, opts)
	return o.Status, err
}

// Run runs the esp_prov flow: proto-ver, session, custom data, an optional
// scan, set-config, apply, then status polling until connected or failed.
func Run(ctx context.Context, t protocomm.Transport, opts Options) (Outcome, error) {
	say := opts.Progress
	if say == nil {
		say = func(string, ...any) {}
	}
	var o Outcome
	c, err := Connect(ctx, t, opts.Credentials)
	if err != nil {
		return o, err
	}
	o.Info = c.Info
	say("session established (device %s, security %d patch %d)", c.Info.Version, effectiveSec(opts.Security, c.Info), c.Info.SecPatchVer)
	for _, cd := range opts.Custom {
		resp, err := c.Custom(ctx, cd.Endpoint, cd.Data)
		if err != nil {
			return o, err
		}
		if o.Custom == nil {
			o.Custom = map[string][]byte{}
		}
		o.Custom[cd.Endpoint] = resp
		say("%s answered %q", cd.Endpoint, resp)
	}
	if opts.Scan {
		if o.Networks, err = c.Scan(ctx, opts.ScanPerRequest); err != nil {
			return o, err
		}
		say("scan found %d networks", len(o.Networks))
	}
	if opts.BeforeCredentials != nil {
		if err := opts.BeforeCredentials(ctx, c); err != nil {
			return o, err
		}
	}
	if err := c.SetConfig(ctx, opts.SSID, opts.Passphrase); err != nil {
		return o, err
	}
	say("credentials for %q sent", opts.SSID)
	if err := c.Apply(ctx); err != nil {
		return o, err
	}
	say("applied; waiting for the device to connect")
	o.Status, err = c.WaitConnected(ctx, opts.PollInterval, func(s Status) { say("state: %s", s) })
	return o, err
}

func effectiveSec(asked int, info Info) int {
	if asked != SecurityAuto {
		return asked
	}
	if info.SecVer >= 0 {
		return info.SecVer
	}
	if info.HasCap("no_sec") {
		return 0
	}
	return 1
}
