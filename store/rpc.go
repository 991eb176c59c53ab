package store

import (
	"context"
	"encoding/json"
	"time"
)

// RPCStatus is where a persistent server-side RPC stands. The names and
// meanings are ThingsBoard's (RpcStatus); docs/rpc.md has the state machine.
type RPCStatus string

const (
	RPCQueued     RPCStatus = "QUEUED"     // stored, waiting for a session subscribed to RPC requests
	RPCSent       RPCStatus = "SENT"       // published to the device; the attempt is running
	RPCDelivered  RPCStatus = "DELIVERED"  // the device acknowledged it (PUBACK); waiting for its answer
	RPCSuccessful RPCStatus = "SUCCESSFUL" // answered (two-way) or delivered (one-way); final
	RPCTimeout    RPCStatus = "TIMEOUT"    // an attempt got no acknowledgement or answer in time; retried
	RPCExpired    RPCStatus = "EXPIRED"    // its expiration time passed before it completed; final
	RPCFailed     RPCStatus = "FAILED"     // retries exhausted, or the device answered with an error; final
)

// Final tells whether no further transition leaves s.
func (s RPCStatus) Final() bool {
	return s == RPCSuccessful || s == RPCExpired || s == RPCFailed
}

// RPC is one persistent server-side RPC call.
type RPC struct {
	ID        int64           `json:"id"`
	DeviceID  int64           `json:"-"`
	Device    string          `json:"device"`
	Method    string          `json:"method"`
	Params    json.RawMessage `json:"params"`
	Oneway    bool            `json:"oneway"`
	Status    RPCStatus       `json:"status"`
	Retries   int             `json:"retries"`   // attempts allowed after the first
	Attempts  int             `json:"attempts"`  // attempts begun so far
	TimeoutMs int64           `json:"timeoutMs"` // bound of one attempt
	CreatedAt time.Time       `json:"createdTime"`
	ExpiresAt time.Time       `json:"expirationTime"`
	UpdatedAt time.Time       `json:"updatedTime"`
	SentAt    time.Time       `json:"sentTime,omitzero"` // start of the latest attempt
	Node      string          `json:"node,omitempty"`    // node of the latest attempt
	Response  json.RawMessage `json:"response,omitempty"`
	Error     string          `json:"error,omitempty"`
}

// RPCQuery selects persistent RPCs, newest first.
type RPCQuery struct {
	DeviceID int64       // 0 means every device
	Since    time.Time   // created at or after; the zero time means no bound
	Status   []RPCStatus // empty means every status
	Before   int64       // IDs strictly below this one; 0 means from the newest
	Limit    int         // 0 means the implementation's default (100)
}

// RPCTransition moves one RPC to To if it is still where the caller saw
// it: in one of From, with exactly Attempts attempts (-1: any), owned by
// DeviceID (0: any). It is how the nodes of a cluster agree on who acts.
type RPCTransition struct {
	ID       int64
	From     []RPCStatus
	Attempts int
	DeviceID int64
	To       RPCStatus
	At       time.Time
	// NewAttempt begins an attempt: attempts+1, SentAt=At, Node=Node.
	NewAttempt bool
	Node       string
	// UndoAttempt takes back the attempt just begun (it never reached the
	// device): attempts-1.
	UndoAttempt bool
	Response    json.RawMessage // stored when not nil
	Error       string          // stored when not empty
}

// RPCs stores persistent RPC calls.
type RPCs interface {
	// CreateRPC stores r (its ID, UpdatedAt and Attempts are set) and
	// returns it.
	CreateRPC(ctx context.Context, r RPC) (RPC, error)
	GetRPC(ctx context.Context, id int64) (RPC, error)
	ListRPCs(ctx context.Context, q RPCQuery) ([]RPC, error)
	// DeleteRPC removes a call; ErrNotFound when there is none.
	DeleteRPC(ctx context.Context, id int64) error
	// TransitionRPC applies t when its conditions hold and returns the
	// updated call and true; false (and no error) when they do not.
	TransitionRPC(ctx context.Context, t RPCTransition) (RPC, bool, error)
	// PendingRPCDevices lists the devices with calls not in a final status.
	PendingRPCDevices(ctx context.Context) ([]int64, error)
	// ExpireRPCs moves every call not final whose expiration time is at or
	// before now to EXPIRED, and returns them.
	ExpireRPCs(ctx context.Context, now time.Time) ([]RPC, error)
	// DeleteRPCsBefore removes at most q.Limit calls created before
	// q.Before or, with q.Finished, calls in a final status last updated
	// before it; more tells that some may remain.
	DeleteRPCsBefore(ctx context.Context, q HistoryPurge) (removed int64, more bool, err error)
}

// RPCNotice is the payload published on the bus's TopicRPC when a
// persistent RPC changes status.
type RPCNotice struct {
	Device   string          `json:"device"`
	TS       int64           `json:"ts"` // ms since the epoch
	ID       int64           `json:"id"`
	Method   string          `json:"method"`
	Status   RPCStatus       `json:"status"` // "DELETED" when removed
	Attempts int             `json:"attempts"`
	Response json.RawMessage `json:"response,omitempty"`
	Error    string          `json:"error,omitempty"`
}

// RPCDeleted is the status of a notice for a removed call.
const RPCDeleted RPCStatus = "DELETED"

// Notice returns the TopicRPC payload for r's current status.
func (r RPC) Notice() []byte {
	b, _ := json.Marshal(RPCNotice{Device: r.Device, TS: r.UpdatedAt.UnixMilli(), ID: r.ID, Method: r.Method,
		Status: r.Status, Attempts: r.Attempts, Response: r.Response, Error: r.Error})
	return b
}
