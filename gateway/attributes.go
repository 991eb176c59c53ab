package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/thingline/thingline/store"
)

// attrRequest is a parsed attribute request. A nil list means the scope
// was not asked for; when neither is given, both are returned in full.
type attrRequest struct {
	client, shared []string
	all            bool
}

// parseAttrRequest reads {"clientKeys":"a,b","sharedKeys":"c"}: ThingsBoard
// uses comma-separated strings; arrays are accepted too.
func parseAttrRequest(payload []byte) (attrRequest, error) {
	var r attrRequest
	if len(strings.TrimSpace(string(payload))) == 0 {
		r.all = true
		return r, nil
	}
	var raw struct {
		ClientKeys json.RawMessage `json:"clientKeys"`
		SharedKeys json.RawMessage `json:"sharedKeys"`
	}
	if err := json.Unmarshal(payload, &raw); err != nil {
		return r, fmt.Errorf("invalid attribute request: %w", err)
	}
	var err error
	if r.client, err = keyList(raw.ClientKeys); err != nil {
		return r, fmt.Errorf("invalid attribute request: clientKeys: %w", err)
	}
	if r.shared, err = keyList(raw.SharedKeys); err != nil {
		return r, fmt.Errorf("invalid attribute request: sharedKeys: %w", err)
	}
	r.all = r.client == nil && r.shared == nil
	return r, nil
}

func keyList(raw json.RawMessage) ([]string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		keys := []string{}
		for _, k := range strings.Split(s, ",") {
			if k = strings.TrimSpace(k); k != "" {
				keys = append(keys, k)
			}
		}
		return keys, nil
	}
	var list []string
	if err := json.Unmarshal(raw, &list); err != nil {
		return nil, fmt.Errorf("want a comma-separated string")
	}
	if list == nil {
		list = []string{}
	}
	return list, nil
}

// answerAttrRequest reads the asked attributes and publishes
// {"client":{..},"shared":{..}}; an empty section is left out.
func (ss *session) answerAttrRequest(ctx context.Context, topic string, req attrRequest) {
	resp := map[string]map[string]json.RawMessage{}
	get := func(scope store.Scope, keys []string, name string) bool {
		if keys == nil && !req.all {
			return true
		}
		if keys != nil && len(keys) == 0 {
			return true
		}
		attrs, err := ss.srv.st.GetAttributes(ctx, ss.dev.ID, scope, keys)
		if err != nil {
			ss.srv.log.Warn("gateway: reading attributes", "device", ss.dev.Name, "err", err)
			return false
		}
		if len(attrs) == 0 {
			return true
		}
		m := make(map[string]json.RawMessage, len(attrs))
		for k, a := range attrs {
			m[k] = a.Value
		}
		resp[name] = m
		return true
	}
	if !get(store.ClientScope, req.client, "client") || !get(store.SharedScope, req.shared, "shared") {
		return
	}
	b, err := json.Marshal(resp)
	if err != nil {
		return
	}
	sub, _ := ss.sub(subAttrResponse)
	if err := ss.publish(topic, b, sub.qos); err != nil {
		ss.srv.log.Debug("gateway: answering attribute request", "device", ss.dev.Name, "err", err)
	}
}

// pushAttributes sends a shared-attribute update ({"k":v} or
// {"deleted":[..]}) to a device subscribed to attribute updates; a device
// that is not subscribed gets nothing, as in ThingsBoard, and the reply
// says so ({"pushed":false}) so that the change is kept for later.
func (ss *session) pushAttributes(payload json.RawMessage) (json.RawMessage, error) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(payload, &obj); err != nil {
		return nil, fmt.Errorf("gateway: attribute update must be a JSON object: %w", err)
	}
	sub, ok := ss.sub(subAttributes)
	if !ok {
		return json.RawMessage(`{"pushed":false}`), nil
	}
	ss.attrMu.Lock()
	defer ss.attrMu.Unlock()
	if err := ss.publish(attributesTopic(sub.st), payload, sub.qos); err != nil {
		return nil, fmt.Errorf("gateway: pushing attributes to %s: %w", ss.dev.Name, err)
	}
	return jsonNull, nil
}
