package twin

import (
	"encoding/json"
	"slices"
)

// RPCBehaviour makes a twin misbehave on chosen server-side RPC methods,
// the way real firmware sometimes does, so that the cloud's timeouts and
// retries can be exercised with a twin.
type RPCBehaviour struct {
	// Ignore: the request is acknowledged (PUBACK) and never answered,
	// like firmware that hangs or reboots inside the handler.
	Ignore []string
	// Fail: the request is answered {"error":"…"}, like firmware that
	// refuses it.
	Fail []string
}

// override decides a request before the twin's own methods: skip means
// send no answer; a non-nil reply is sent instead of the method's.
func (b RPCBehaviour) override(payload []byte) (skip bool, reply []byte) {
	if len(b.Ignore) == 0 && len(b.Fail) == 0 {
		return false, nil
	}
	var req struct {
		Method string `json:"method"`
	}
	if json.Unmarshal(payload, &req) != nil {
		return false, nil
	}
	switch {
	case slices.Contains(b.Ignore, req.Method):
		return true, nil
	case slices.Contains(b.Fail, req.Method):
		return false, errorReply("failing " + req.Method + " on purpose")
	}
	return false, nil
}
