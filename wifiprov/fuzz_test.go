package wifiprov_test

import (
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/thingline/thingline/protocomm/pb"
	"github.com/thingline/thingline/protocomm/security"
	"github.com/thingline/thingline/wifiprov"
)

// FuzzDeviceEndpoints feeds arbitrary bodies to every endpoint of a
// security 0 device, where bodies reach the manager's protobuf decoding
// unencrypted.
func FuzzDeviceEndpoints(f *testing.F) {
	seed := func(m proto.Message) []byte { b, _ := proto.Marshal(m); return b }
	f.Add(uint8(0), seed(&pb.WiFiConfigPayload{Msg: pb.WiFiConfigMsgType_TypeCmdSetConfig,
		Payload: &pb.WiFiConfigPayload_CmdSetConfig{CmdSetConfig: &pb.CmdSetConfig{Ssid: []byte("home"), Passphrase: []byte("correct horse")}}}))
	f.Add(uint8(0), seed(&pb.WiFiConfigPayload{Msg: pb.WiFiConfigMsgType_TypeCmdApplyConfig}))
	f.Add(uint8(0), seed(&pb.WiFiConfigPayload{Msg: pb.WiFiConfigMsgType_TypeCmdGetStatus}))
	f.Add(uint8(1), seed(&pb.WiFiScanPayload{Msg: pb.WiFiScanMsgType_TypeCmdScanStart,
		Payload: &pb.WiFiScanPayload_CmdScanStart{CmdScanStart: &pb.CmdScanStart{Blocking: true}}}))
	f.Add(uint8(1), seed(&pb.WiFiScanPayload{Msg: pb.WiFiScanMsgType_TypeCmdScanResult,
		Payload: &pb.WiFiScanPayload_CmdScanResult{CmdScanResult: &pb.CmdScanResult{StartIndex: 4294967295, Count: 2}}}))
	f.Add(uint8(2), seed(&pb.WiFiCtrlPayload{Msg: pb.WiFiCtrlMsgType_TypeCmdCtrlReprov}))
	f.Add(uint8(3), seed(&pb.SessionData{Proto: &pb.SessionData_Sec0{Sec0: &pb.Sec0Payload{}}}))
	eps := []string{wifiprov.EndpointConfig, wifiprov.EndpointScan, wifiprov.EndpointCtrl, wifiprov.EndpointSession, wifiprov.EndpointVersion, "custom-data", "missing"}
	f.Fuzz(func(t *testing.T, ep uint8, body []byte) {
		dev, err := wifiprov.NewDevice(wifiprov.DeviceConfig{Security: security.NewSec0(), WiFi: newRadio()})
		if err != nil {
			t.Fatal(err)
		}
		_ = dev.AddCustomEndpoint("custom-data", func(_ uint32, b []byte) ([]byte, error) { return b, nil })
		name := eps[int(ep)%len(eps)]
		pc := dev.Protocomm()
		pc.NewSession(1)
		_, _ = pc.Handle(1, name, body)
		_, _ = pc.Handle(1, name, body)
		_, _ = pc.Handle(1, wifiprov.EndpointScan, body)
	})
}

func FuzzParseInfo(f *testing.F) {
	f.Add([]byte(wifiprov.VersionJSON(security.NewSec0(), nil)))
	f.Add([]byte("V0.1"))
	f.Add([]byte(`{"prov":{"sec_ver":"x"}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		info := wifiprov.ParseInfo(b)
		_ = info.HasCap("no_sec")
	})
}
