package wifiprov

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"

	"google.golang.org/protobuf/proto"

	"github.com/thingline/thingline/protocomm"
	"github.com/thingline/thingline/protocomm/pb"
	"github.com/thingline/thingline/protocomm/security"
)

// AppInfo is one application label added to proto-ver next to "prov", as
// wifi_prov_mgr_set_app_info does (RainMaker adds "rmaker", for example).
type AppInfo struct {
	Label        string
	Version      string
	Capabilities []string
}

// DeviceConfig configures a provisioning device.
type DeviceConfig struct {
	// Security protects the session; required (security.NewSec0/1/2).
	Security security.Scheme
	// WiFi is the station to configure; required.
	WiFi WiFi
	// Apps are extra proto-ver labels, in order.
	Apps []AppInfo
	// OnProvisioned is called, outside any lock, once the station connected
	// with the received credentials.
	OnProvisioned func(ssid, passphrase string)
	// ScanMaxEntries caps the results kept from a scan
	// (CONFIG_WIFI_PROV_SCAN_MAX_ENTRIES, 16 by default).
	ScanMaxEntries int
}

// provisioning states of manager.c.
type provState int

const (
	stateStarted provState = iota
	stateCredRecv
	stateFail
	stateSuccess
)

// Device is the device side of Wi-Fi provisioning.
type Device struct {
	cfg DeviceConfig
	pc  *protocomm.Protocomm

	mu         sync.Mutex // guards the fields below; never held while calling WiFi or callbacks
	state      provState
	pending    *pb.CmdSetConfig // set by set-config, consumed by apply
	status     Status
	scan       []AP
	scanDone   bool
	custom     []string
	attempt    uint64 // identifies the connection attempt whose result is awaited
	done       chan struct{}
	doneClosed bool
}

// NewDevice builds the device and registers its endpoints on a new
// protocomm instance.
func NewDevice(cfg DeviceConfig) (*Device, error) {
	if cfg.Security == nil || cfg.WiFi == nil {
		return nil, errors.New("wifiprov: security scheme and wifi are required")
	}
	if cfg.ScanMaxEntries <= 0 {
		cfg.ScanMaxEntries = 16
	}
	for _, a := range cfg.Apps {
		if a.Label == "" || a.Label == "prov" {
			return nil, fmt.Errorf("wifiprov: app label %q not allowed", a.Label)
		}
	}
	d := &Device{cfg: cfg, pc: protocomm.New(cfg.Security), done: make(chan struct{})}
	d.status = Status{State: Disconnected, AttemptsRemaining: -1}
	d.pc.AddEndpoint(EndpointConfig, d.handleConfig)
	d.pc.AddEndpoint(EndpointScan, d.handleScan)
	d.pc.AddEndpoint(EndpointCtrl, d.handleCtrl)
	d.pc.SetVersion(VersionJSON(cfg.Security, cfg.Apps))
	return d, nil
}

// Protocomm is what transports serve.
func (d *Device) Protocomm() *protocomm.Protocomm { return d.pc }

// AddCustomEndpoint adds an application endpoint (like "custom-data"). Its
// bodies are encrypted like the others but are not protobuf for the
// manager. Over BLE it gets the next id from FirstCustomID on.
func (d *Device) AddCustomEndpoint(name string, h protocomm.Handler) error {
	if name == "" || strings.ContainsAny(name, "/ ?#") {
		return fmt.Errorf("wifiprov: bad endpoint name %q", name)
	}
	if _, std := EndpointIDs[name]; std {
		return fmt.Errorf("wifiprov: %q is a standard endpoint", name)
	}
	d.mu.Lock()
	for _, n := range d.custom {
		if n == name {
			d.mu.Unlock()
			return fmt.Errorf("wifiprov: endpoint %q already exists", name)
		}
	}
	d.custom = append(d.custom, name)
	d.mu.Unlock()
	d.pc.AddEndpoint(name, h)
	return nil
}

// Endpoints lists every endpoint with its BLE 16-bit id.
func (d *Device) Endpoints() map[string]uint16 {
	d.mu.Lock()
	defer d.mu.Unlock()
	m := make(map[string]uint16, len(EndpointIDs)+len(d.custom))
	for n, id := range EndpointIDs {
		m[n] = id
	}
	for i, n := range d.custom {
		m[n] = FirstCustomID + uint16(i)
	}
	return m
}

// Status is the current station status.
func (d *Device) Status() Status {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.status
}

// Done is closed once a client has seen the Connected status: the manager
// then stops the provisioning service (after its cleanup delay).
func (d *Device) Done() <-chan struct{} { return d.done }

// VersionJSON renders proto-ver as the manager does, with cJSON_Print's
// layout: tab-indented, "key":<tab>value, arrays on one line.
func VersionJSON(sec security.Scheme, apps []AppInfo) string {
	var caps []string
	switch {
	case sec.Version() == 0:
		caps = append(caps, "no_sec")
	case sec.Version() == 1:
		if p, ok := sec.(interface{ HasPoP() bool }); ok && !p.HasPoP() {
			caps = append(caps, "no_pop")
		}
	}
	caps = append(caps, "wifi_scan")
	var b strings.Builder
	b.WriteString("{\n")
	for _, a := range apps {
		fmt.Fprintf(&b, "\t%s:\t{\n\t\t\"ver\":\t%s,\n\t\t\"cap\":\t%s\n\t},\n", jsonString(a.Label), jsonString(a.Version), jsonArray(a.Capabilities))
	}
	fmt.Fprintf(&b, "\t\"prov\":\t{\n\t\t\"ver\":\t%s,\n\t\t\"sec_ver\":\t%d,\n\t\t\"sec_patch_ver\":\t%d,\n\t\t\"cap\":\t%s\n\t}\n}",
		jsonString(Version), sec.Version(), sec.PatchVersion(), jsonArray(caps))
	return b.String()
}

func jsonString(s string) string {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s)
	return strings.TrimSuffix(buf.String(), "\n")
}

func jsonArray(items []string) string {
	q := make([]string, len(items))
	for i, s := range items {
		q[i] = jsonString(s)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

func (d *Device) handleConfig(_ uint32, req []byte) ([]byte, error) {
	var in pb.WiFiConfigPayload
	if err := proto.Unmarshal(req, &in); err != nil {
		return nil, fmt.Errorf("wifiprov: decoding config request: %w", err)
	}
	out := &pb.WiFiConfigPayload{Msg: in.Msg + 1}
	switch in.Msg {
	case pb.WiFiConfigMsgType_TypeCmdGetStatus:
		out.Payload = &pb.WiFiConfigPayload_RespGetStatus{RespGetStatus: d.getStatus()}
	case pb.WiFiConfigMsgType_TypeCmdSetConfig:
		sc := in.GetCmdSetConfig()
		if sc == nil {
			return nil, errors.New("wifiprov: set-config without payload")
		}
		out.Payload = &pb.WiFiConfigPayload_RespSetConfig{RespSetConfig: &pb.RespSetConfig{Status: d.setConfig(sc)}}
	case pb.WiFiConfigMsgType_TypeCmdApplyConfig:
		out.Payload = &pb.WiFiConfigPayload_RespApplyConfig{RespApplyConfig: &pb.RespApplyConfig{Status: d.apply()}}
	default:
		return nil, fmt.Errorf("wifiprov: unknown config message type %d", in.Msg)
	}
	return proto.Marshal(out)
}

func (d *Device) getStatus() *pb.RespGetStatus {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.state == stateStarted {
		// The manager has no station state before credentials arrive.
		return &pb.RespGetStatus{Status: pb.Status_InternalError, StaState: pb.WifiStationState_Disconnected}
	}
	s := d.status
	r := &pb.RespGetStatus{Status: pb.Status_Success, StaState: pb.WifiStationState(s.State)}
	switch s.State {
	case Connected:
		r.State = &pb.RespGetStatus_Connected{Connected: &pb.WifiConnectedState{
			Ip4Addr: s.IP, AuthMode: pb.WifiAuthMode(s.AP.Auth), Ssid: []byte(s.AP.SSID),
			Bssid: s.AP.BSSID, Channel: int32(s.AP.Channel),
		}}
		if !d.doneClosed {
			d.doneClosed = true
			close(d.done)
		}
	case ConnectionFailed:
		r.State = &pb.RespGetStatus_FailReason{FailReason: pb.WifiConnectFailedReason(s.Reason)}
	case Connecting:
		if s.AttemptsRemaining >= 0 {
			r.State = &pb.RespGetStatus_AttemptFailed{AttemptFailed: &pb.WifiAttemptFailed{AttemptsRemaining: uint32(s.AttemptsRemaining)}}
		}
	}
	return r
}

func (d *Device) setConfig(sc *pb.CmdSetConfig) pb.Status {
	// Length limits of handlers.c: the SSID and passphrase must leave room
	// for a NUL in 33 and 64 bytes; a BSSID is absent or 6 bytes.
	if len(sc.Ssid) == 0 || len(sc.Ssid) > 32 || len(sc.Passphrase) > 63 || (len(sc.Bssid) != 0 && len(sc.Bssid) != 6) {
		return pb.Status_InvalidArgument
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.state == stateCredRecv || d.state == stateSuccess {
		return pb.Status_InternalError
	}
	d.pending = proto.Clone(sc).(*pb.CmdSetConfig)
	return pb.Status_Success
}

func (d *Device) apply() pb.Status {
	d.mu.Lock()
	sc := d.pending
	if sc == nil || d.state == stateCredRecv || d.state == stateSuccess {
		d.mu.Unlock()
		return pb.Status_InternalError
	}
	d.pending = nil
	d.state = stateCredRecv
	d.status = Status{State: Connecting, AttemptsRemaining: -1}
	d.attempt++
	attempt := d.attempt
	d.mu.Unlock()
	go d.connect(attempt, string(sc.Ssid), string(sc.Passphrase))
	return pb.Status_Success
}

func (d *Device) connect(attempt uint64, ssid, pass string) {
	res := d.cfg.WiFi.Connect(ssid, pass)
	d.mu.Lock()
	if d.attempt != attempt {
		// A reset or reprovisioning superseded this attempt.
		d.mu.Unlock()
		return
	}
	if res.Connected {
		ap := res.AP
		if ap.SSID == "" {
			ap.SSID = ssid
		}
		d.state = stateSuccess
		d.status = Status{State: Connected, IP: res.IP, AP: ap, AttemptsRemaining: -1}
	} else {
		d.state = stateFail
		d.status = Status{State: ConnectionFailed, Reason: res.Reason, AttemptsRemaining: -1}
	}
	d.mu.Unlock()
	if res.Connected && d.cfg.OnProvisioned != nil {
		d.cfg.OnProvisioned(ssid, pass)
	}
}

func (d *Device) handleScan(_ uint32, req []byte) ([]byte, error) {
	var in pb.WiFiScanPayload
	if err := proto.Unmarshal(req, &in); err != nil {
		return nil, fmt.Errorf("wifiprov: decoding scan request: %w", err)
	}
	out := &pb.WiFiScanPayload{Msg: in.Msg + 1, Status: pb.Status_Success}
	switch in.Msg {
	case pb.WiFiScanMsgType_TypeCmdScanStart:
		if in.GetCmdScanStart() == nil {
			return nil, errors.New("wifiprov: scan start without payload")
		}
		// The simulated radio answers at once, so blocking and
		// non-blocking scans both finish before the reply.
		aps := d.cfg.WiFi.Scan()
		if len(aps) > d.cfg.ScanMaxEntries {
			aps = aps[:d.cfg.ScanMaxEntries]
		}
		d.mu.Lock()
		d.scan, d.scanDone = aps, true
		d.mu.Unlock()
		out.Payload = &pb.WiFiScanPayload_RespScanStart{RespScanStart: &pb.RespScanStart{}}
	case pb.WiFiScanMsgType_TypeCmdScanStatus:
		d.mu.Lock()
		out.Payload = &pb.WiFiScanPayload_RespScanStatus{RespScanStatus: &pb.RespScanStatus{
			ScanFinished: d.scanDone, ResultCount: uint32(len(d.scan)),
		}}
		d.mu.Unlock()
	case pb.WiFiScanMsgType_TypeCmdScanResult:
		r := in.GetCmdScanResult()
		if r == nil {
			return nil, errors.New("wifiprov: scan result without payload")
		}
		d.mu.Lock()
		aps := d.scan
		d.mu.Unlock()
		start, count := uint64(r.StartIndex), uint64(r.Count)
		if count == 0 || start+count > uint64(len(aps)) {
			return nil, fmt.Errorf("wifiprov: scan results %d+%d out of %d", start, count, len(aps))
		}
		res := &pb.RespScanResult{}
		for _, ap := range aps[start : start+count] {
			res.Entries = append(res.Entries, &pb.WiFiScanResult{
				Ssid: []byte(ap.SSID), Channel: uint32(ap.Channel), Rssi: int32(ap.RSSI),
				Bssid: ap.BSSID, Auth: pb.WifiAuthMode(ap.Auth),
			})
		}
		out.Payload = &pb.WiFiScanPayload_RespScanResult{RespScanResult: res}
	default:
		return nil, fmt.Errorf("wifiprov: unknown scan message type %d", in.Msg)
	}
	return proto.Marshal(out)
}

func (d *Device) handleCtrl(_ uint32, req []byte) ([]byte, error) {
	var in pb.WiFiCtrlPayload
	if err := proto.Unmarshal(req, &in); err != nil {
		return nil, fmt.Errorf("wifiprov: decoding ctrl request: %w", err)
	}
	out := &pb.WiFiCtrlPayload{Msg: in.Msg + 1, Status: pb.Status_Success}
	d.mu.Lock()
	defer d.mu.Unlock()
	switch in.Msg {
	case pb.WiFiCtrlMsgType_TypeCmdCtrlReset:
		// Only a failed provisioning can be reset back to waiting for
		// credentials (wifi_prov_mgr_reset_sm_state_on_failure).
		if d.state != stateFail {
			out.Status = pb.Status_InternalError
		} else {
			d.resetLocked()
		}
		out.Payload = &pb.WiFiCtrlPayload_RespCtrlReset{RespCtrlReset: &pb.RespCtrlReset{}}
	case pb.WiFiCtrlMsgType_TypeCmdCtrlReprov:
		// Re-provisioning starts over after a success (the twin keeps the
		// service running, as with wifi_prov_mgr_disable_auto_stop).
		d.resetLocked()
		out.Payload = &pb.WiFiCtrlPayload_RespCtrlReprov{RespCtrlReprov: &pb.RespCtrlReprov{}}
	default:
		return nil, fmt.Errorf("wifiprov: unknown ctrl message type %d", in.Msg)
	}
	return proto.Marshal(out)
}

func (d *Device) resetLocked() {
	d.state = stateStarted
	d.pending = nil
	d.attempt++
	d.status = Status{State: Disconnected, AttemptsRemaining: -1}
}
