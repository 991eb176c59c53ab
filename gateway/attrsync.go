package gateway

import (
	"encoding/json"
	"sort"

	"github.com/thingline/thingline/store"
)

// catchUpShared pushes the shared-attribute changes the device was not
// told of (made while it was offline or not subscribed): the current
// values of changed keys as one update, the deleted keys as
// {"deleted":[…]}, then clears what it pushed. ThingsBoard pushes nothing
// on reconnect; firmware written for it also asks with an attribute
// request, which is answered from the store either way.
func (ss *session) catchUpShared() {
	ctx, cancel := ss.storeCtx()
	defer cancel()
	ss.attrMu.Lock()
	defer ss.attrMu.Unlock()
	st := ss.srv.st
	pending, err := st.PendingShared(ctx, ss.dev.ID)
	if err != nil || len(pending) == 0 {
		if err != nil {
			ss.srv.log.Warn("gateway: reading missed shared attributes", "device", ss.dev.Name, "err", err)
		}
		return
	}
	var changed, deleted []string
	writing := map[string]bool{} // marked as changed, not stored yet
	for _, c := range pending {
		if c.Deleted {
			deleted = append(deleted, c.Key)
		} else {
			changed = append(changed, c.Key)
		}
	}
	sub, ok := ss.sub(subAttributes)
	if !ok {
		return
	}
	if len(changed) > 0 {
		attrs, err := st.GetAttributes(ctx, ss.dev.ID, store.SharedScope, changed)
		if err != nil {
			ss.srv.log.Warn("gateway: reading missed shared attributes", "device", ss.dev.Name, "err", err)
			return
		}
		// A key marked as changed but absent is being written: the API
		// marks before it stores (docs/rpc.md). Telling the device it was
		// deleted would be false, and clearing the mark would lose the
		// change if the writer's live push misses this session: keep the
		// mark for the writer's push or the next subscription.
		upd := make(map[string]json.RawMessage, len(attrs))
		for _, k := range changed {
			if a, ok := attrs[k]; ok {
				upd[k] = a.Value
			} else {
				writing[k] = true
			}
		}
		if len(upd) > 0 {
			b, _ := json.Marshal(upd)
			if err := ss.publish(attributesTopic(sub.st), b, sub.qos); err != nil {
				return
			}
		}
	}
	if len(deleted) > 0 {
		sort.Strings(deleted)
		b, _ := json.Marshal(map[string][]string{"deleted": deleted})
		if err := ss.publish(attributesTopic(sub.st), b, sub.qos); err != nil {
			return
		}
	}
	told := pending[:0:0]
	for _, c := range pending {
		if !writing[c.Key] {
			told = append(told, c)
		}
	}
	if err := st.ClearShared(ctx, ss.dev.ID, told); err != nil {
		ss.srv.log.Warn("gateway: clearing missed shared attributes", "device", ss.dev.Name, "err", err)
	}
}
