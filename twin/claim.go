package twin

import (
	"encoding/json"
	"strings"
)

// Claiming, device side. Two messages, both on v1/devices/me/claim:
//   - ThingsBoard's claim request, when the twin runs with --claim-secret:
//     {"secretKey":S,"durationMs":window};
//   - the association of zero-touch provisioning, when the app handed over a
//     user id and secret on cloud_user_assoc: {"userId":U,"secretKey":S}.
// Either carries "reset":true after a factory reset. The twin sends the
// association in preference, on each connection until the cloud gives a
// final answer on v1/devices/me/claim/response.

// claimRequest returns the claim message to send on connecting, or nil.
func (d *device) claimRequest() []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	m := map[string]any{}
	switch {
	case d.st.Assoc != nil:
		m["userId"], m["secretKey"] = d.st.Assoc.UserID, d.st.Assoc.Secret
		m["durationMs"] = d.cc.claimWindow.Milliseconds()
	case d.cc.claimSecret != "" && !d.claimed:
		m["secretKey"], m["durationMs"] = d.cc.claimSecret, d.cc.claimWindow.Milliseconds()
	default:
		return nil
	}
	if d.st.Reset {
		m["reset"] = true
	}
	b, _ := json.Marshal(m)
	return b
}

// claimResponse takes the cloud's answer. SUCCESS and CLAIMED (owned by
// someone, no reset) are final: the claim ends, and SUCCESS also ends the
// reset's mark. PENDING, EXPIRED (no user matched it in time) and FAILURE
// (the cloud could not record it) leave the claim to be sent again on the
// next connection.
func (d *device) claimResponse(payload []byte) {
	var r struct {
		Result string `json:"result"`
	}
	if json.Unmarshal(payload, &r) != nil || r.Result == "" {
		return
	}
	d.cc.logf("%s: claim: %s", d.id.SN, strings.TrimSpace(string(payload)))
	if r.Result == "PENDING" {
		return
	}
	final := r.Result == "SUCCESS" || r.Result == "CLAIMED"
	d.mu.Lock()
	st := d.st.clone()
	st.Claim = r.Result
	if final {
		d.claimed = true
		st.Assoc = nil
	}
	if r.Result == "SUCCESS" {
		st.Reset = false
	}
	d.st = st
	d.mu.Unlock()
	if d.persist != nil {
		if err := d.persist(st); err != nil {
			d.cc.logf("%s: saving the claim result: %v", d.id.SN, err)
		}
	}
}
