package twin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/thingline/thingline/ota/checksum"
)

// Firmware updates as ThingsBoard's SDKs do them (OTA_Firmware_Update.h,
// tb_device_mqtt.py): on connect the twin reports current_fw_title and
// current_fw_version as telemetry and asks for the fw_* shared
// attributes; when they name another version it downloads the image in
// chunks over v2/fw/request/{id}/chunk/{n}, reports fw_state DOWNLOADING,
// DOWNLOADED, VERIFIED (the checksum, whatever fw_checksum_algorithm
// says), UPDATING, then "reboots" into the new version, keeps it in its
// state, and reports UPDATED with the new current_fw_version.

// OTA failure modes a twin can be told to act out (Config.OTAFail), for
// tests and demonstrations.
const (
	OTAFailNone     = ""
	OTAFailDownload = "download" // report FAILED after the first chunk
	OTAFailVerify   = "verify"   // the image does not match its checksum
	OTAFailReboot   = "reboot"   // reboot once in the middle of the download
	OTAFailSilent   = "silent"   // ignore the update: report nothing at all
)

// ValidOTAFail tells whether mode is one of the failure modes.
func ValidOTAFail(mode string) bool {
	switch mode {
	case OTAFailNone, OTAFailDownload, OTAFailVerify, OTAFailReboot, OTAFailSilent:
		return true
	}
	return false
}

const (
	topicAttrRequest  = "v1/devices/me/attributes/request/"
	topicAttrResponse = "v1/devices/me/attributes/response/"
	topicFWResponse   = "v2/fw/response/"
	topicFWError      = "v2/fw/error"
	fwSharedKeys      = "fw_checksum,fw_checksum_algorithm,fw_size,fw_title,fw_version"
	// otaChunkTimeout and otaChunkRetries are the SDK's watchdog: a chunk
	// not received in time is asked for again, a few times.
	otaChunkTimeout = 10 * time.Second
	otaChunkRetries = 3
	maxFirmware     = 16 << 20
)

// fwOffer is the fw_* attributes naming a package.
type fwOffer struct {
	Title     string `json:"fw_title"`
	Version   string `json:"fw_version"`
	Size      int64  `json:"fw_size"`
	Checksum  string `json:"fw_checksum"`
	Algorithm string `json:"fw_checksum_algorithm"`
}

// fwChunk is a chunk (or an error) delivered by the reader.
type fwChunk struct {
	topic string
	data  []byte
}

// otaSession is the OTA side of one MQTT session.
type otaSession struct {
	ctx    context.Context
	chunks chan fwChunk
}

// otaOnConnect tells the cloud the running firmware and asks for the fw
// attributes; after a reboot into a new version it reports UPDATED.
func (d *device) otaOnConnect(c *mqttConn) error {
	d.mu.Lock()
	title, version := FirmwareTitle, d.fwVersion()
	var st *State
	info := map[string]string{"current_fw_title": title, "current_fw_version": version}
	if p := d.st.PendingOTA; p != nil && p.Version == version {
		info["fw_state"] = "UPDATED"
		d.st.PendingOTA = nil
		s := d.st.clone()
		st = &s
	}
	d.inflight++
	d.mu.Unlock()
	if st != nil && d.persist != nil {
		if err := d.persist(*st); err != nil {
			d.cc.logf("%s: %v", d.id.SN, err)
		}
	}
	if d.otaFail == OTAFailSilent {
		return nil
	}
	b, _ := json.Marshal(info)
	if err := d.send(c, TopicTelemetry, b); err != nil {
		return err
	}
	d.mu.Lock()
	d.inflight++
	d.mu.Unlock()
	req, _ := json.Marshal(map[string]string{"sharedKeys": fwSharedKeys})
	return d.send(c, topicAttrRequest+"1", req)
}

// otaPublish routes the reader's OTA messages; false when topic is not one.
func (d *device) otaPublish(c *mqttConn, topic string, payload []byte) bool {
	switch {
	case strings.HasPrefix(topic, topicAttrResponse):
		var r struct {
			Shared json.RawMessage `json:"shared"`
		}
		if json.Unmarshal(payload, &r) == nil && r.Shared != nil {
			d.otaOffer(c, r.Shared)
		}
	case strings.HasPrefix(topic, topicFWResponse), topic == topicFWError:
		d.mu.Lock()
		o := d.ota
		d.mu.Unlock()
		if o != nil {
			select {
			case o.chunks <- fwChunk{topic: topic, data: append([]byte(nil), payload...)}:
			default: // nobody waits for it: a late duplicate
			}
		}
	default:
		return false
	}
	return true
}

// otaOffer starts a download when the fw attributes name a version other
// than the running one; a download already under way for it goes on.
func (d *device) otaOffer(c *mqttConn, raw json.RawMessage) {
	var o fwOffer
	// As the SDK, an announcement needs all five keys (an echo of the
	// device's own fw_version client attribute is not one).
	if json.Unmarshal(raw, &o) != nil || o.Version == "" || o.Title == "" || o.Checksum == "" || o.Algorithm == "" || o.Size == 0 {
		return
	}
	if d.otaFail == OTAFailSilent || c == nil {
		return
	}
	d.mu.Lock()
	running := d.fwVersion()
	// Busy with it, or it failed since this boot: the firmware does not
	// loop on a bad image; a reboot or another version starts afresh.
	busy := d.downloading == o.Version || d.failedVersion == o.Version
	if o.Version != running && !busy {
		d.downloading = o.Version
	}
	sess := d.ota
	d.mu.Unlock()
	if o.Version == running || busy || sess == nil {
		if o.Version == running && o.Title == FirmwareTitle {
			// As the SDK: the assigned firmware is the running one.
			d.otaState(c, "UPDATED", "")
		}
		return
	}
	go d.download(c, sess, o)
}

// otaState reports fw_state (and fw_error) as telemetry.
func (d *device) otaState(c *mqttConn, state, errText string) {
	m := map[string]string{"fw_state": state}
	if errText != "" {
		m["fw_error"] = errText
	}
	b, _ := json.Marshal(m)
	d.mu.Lock()
	d.inflight++
	d.mu.Unlock()
	if err := d.send(c, TopicTelemetry, b); err != nil {
		d.cc.logf("%s: reporting fw_state %s: %v", d.id.SN, state, err)
	}
	d.cc.logf("%s: firmware: %s %s", d.id.SN, state, errText)
}

// download fetches, verifies and installs o, or reports FAILED.
func (d *device) download(c *mqttConn, sess *otaSession, o fwOffer) {
	defer func() {
		d.mu.Lock()
		if d.downloading == o.Version {
			d.downloading = ""
		}
		d.mu.Unlock()
	}()
	fail := func(msg string) {
		d.mu.Lock()
		d.failedVersion = o.Version
		d.mu.Unlock()
		d.otaState(c, "FAILED", msg)
	}
	if o.Title != FirmwareTitle {
		// The SDK refuses a package made for another kind of device.
		fail(fmt.Sprintf("firmware title %q is not for this device (%s)", o.Title, FirmwareTitle))
		return
	}
	if _, err := checksum.Normalize(o.Algorithm); err != nil {
		fail(fmt.Sprintf("checksum algorithm %q is not supported", o.Algorithm))
		return
	}
	if o.Size <= 0 || o.Size > maxFirmware {
		fail(fmt.Sprintf("firmware size %d is out of range", o.Size))
		return
	}
	d.mu.Lock()
	d.st.PendingOTA = &PendingOTA{Title: o.Title, Version: o.Version}
	st := d.st.clone()
	d.reqID++
	req := strconv.Itoa(d.reqID)
	d.mu.Unlock()
	if d.persist != nil {
		if err := d.persist(st); err != nil {
			d.cc.logf("%s: %v", d.id.SN, err)
		}
	}
	d.otaState(c, "DOWNLOADING", "")
	chunkSize := d.cc.otaChunk
	image := make([]byte, 0, o.Size)
	for n := 0; int64(len(image)) < o.Size; n++ {
		part, err := d.fetchChunk(c, sess, req, n, chunkSize)
		if err != nil {
			if sess.ctx.Err() == nil {
				fail(err.Error())
			}
			return
		}
		if len(part) == 0 {
			fail(fmt.Sprintf("the image ended at %d of %d bytes", len(image), o.Size))
			return
		}
		image = append(image, part...)
		if n == 0 {
			switch d.otaFail {
			case OTAFailDownload:
				fail("download failed (told to fail)")
				return
			case OTAFailReboot:
				if d.otaRebooted.CompareAndSwap(false, true) {
					d.cc.logf("%s: firmware: rebooting in the middle of the download (told to)", d.id.SN)
					d.requestReboot(c)
					return
				}
			}
		}
	}
	if int64(len(image)) != o.Size {
		fail(fmt.Sprintf("received %d bytes, fw_size is %d", len(image), o.Size))
		return
	}
	d.otaState(c, "DOWNLOADED", "")
	if d.otaFail == OTAFailVerify {
		image[0] ^= 0xff
	}
	if ok, err := checksum.Verify(o.Algorithm, image, o.Checksum); err != nil || !ok {
		fail(fmt.Sprintf("checksum verification failed (%s)", o.Algorithm))
		return
	}
	d.otaState(c, "VERIFIED", "")
	d.otaState(c, "UPDATING", "")
	// "Flash" and reboot into the new version: the version is part of the
	// persisted state, as the new app partition would be.
	d.mu.Lock()
	d.st.FWVersion = o.Version
	st = d.st.clone()
	d.mu.Unlock()
	if d.persist != nil {
		if err := d.persist(st); err != nil {
			fail(fmt.Sprintf("writing the new firmware: %v", err))
			return
		}
	}
	d.requestReboot(c)
}

// fetchChunk asks for chunk n and waits for it, asking again on silence.
func (d *device) fetchChunk(c *mqttConn, sess *otaSession, req string, n, size int) ([]byte, error) {
	want := topicFWResponse + req + "/chunk/" + strconv.Itoa(n)
	for try := 0; try < otaChunkRetries; try++ {
		if err := c.publish("v2/fw/request/"+req+"/chunk/"+strconv.Itoa(n), []byte(strconv.Itoa(size)), 1); err != nil {
			return nil, fmt.Errorf("requesting chunk %d: %w", n, err)
		}
		d.mu.Lock()
		d.inflight++
		d.mu.Unlock()
		t := time.NewTimer(d.cc.otaChunkTimeout)
	wait:
		for {
			select {
			case <-sess.ctx.Done():
				t.Stop()
				return nil, sess.ctx.Err()
			case <-t.C:
				break wait
			case m := <-sess.chunks:
				if m.topic == topicFWError {
					t.Stop()
					return nil, fmt.Errorf("the server answered %s", m.data)
				}
				if m.topic == want {
					t.Stop()
					return m.data, nil
				}
			}
		}
	}
	return nil, fmt.Errorf("chunk %d not received after %d requests", n, otaChunkRetries)
}

// requestReboot ends the session so that the twin boots again.
func (d *device) requestReboot(c *mqttConn) {
	d.mu.Lock()
	d.rebootAsked = true
	d.mu.Unlock()
	c.conn.Close()
}

// takeReboot tells (once) whether the session ended for a reboot.
func (d *device) takeReboot() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	r := d.rebootAsked
	d.rebootAsked = false
	return r
}

var errOTAFail = errors.New("twin: unknown OTA failure mode")
