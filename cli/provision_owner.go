package cli

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strconv"
	"time"

	"github.com/thingline/thingline/wifiprov"
)

// ownerFlow is the app's part of zero-touch ownership during provisioning:
// before the Wi-Fi credentials, it learns who the caller is, hands the
// device the caller's user id and a one-time secret over cloud_user_assoc,
// and asks the cloud whose device this is (mine, unowned, someone else's:
// case A or B); after the device has joined, it sends the cloud its half of
// the association until the cloud matches it with the device's.
type ownerFlow struct {
	api    apiClient
	out    io.Writer
	device string // the node id the device answered
	secret string
	whose  string
}

// beforeCredentials is wifiprov's BeforeCredentials hook.
func (f *ownerFlow) beforeCredentials(ctx context.Context, c *wifiprov.Client) error {
	var me struct {
		ID       int64  `json:"id"`
		Username string `json:"username"`
	}
	if err := f.api.getJSON(ctx, "/api/v1/users/me", &me); err != nil {
		return fmt.Errorf("provision: who is the user: %w", err)
	}
	if me.ID == 0 {
		return errors.New("provision: --user-token must be a user's token, not the admin token")
	}
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return err
	}
	f.secret = hex.EncodeToString(b)
	node, err := c.Associate(ctx, strconv.FormatInt(me.ID, 10), f.secret)
	if err != nil {
		return fmt.Errorf("provision: %w", err)
	}
	f.device = node
	var w struct {
		Owner string `json:"owner"`
	}
	if err := f.api.getJSON(ctx, "/api/v1/devices/"+url.PathEscape(node)+"/whose", &w); err != nil {
		return fmt.Errorf("provision: whose device is %s: %w", node, err)
	}
	f.whose = w.Owner
	switch w.Owner {
	case "mine":
		fmt.Fprintf(f.out, "device %s is already yours (%s): its history continues\n", node, me.Username)
	case "someone-else":
		fmt.Fprintf(f.out, "device %s belongs to someone else: it must have been factory-reset for it to become yours\n", node)
	default:
		fmt.Fprintf(f.out, "device %s is unowned: it will become yours (%s)\n", node, me.Username)
	}
	return nil
}

// claim sends the app's half until the cloud matched it or refused it.
func (f *ownerFlow) claim(ctx context.Context, every time.Duration) error {
	body, _ := json.Marshal(map[string]string{"device": f.device, "secretKey": f.secret})
	for {
		out, err := f.api.do(ctx, "POST", "/api/v1/claims", "application/json", body)
		if err != nil {
			return fmt.Errorf("provision: claiming %s: %w", f.device, err)
		}
		var a struct {
			Result  string `json:"result"`
			Outcome string `json:"outcome"`
		}
		if err := json.Unmarshal(out, &a); err != nil {
			return fmt.Errorf("provision: claiming %s: undecodable answer: %w", f.device, err)
		}
		if a.Result == "SUCCESS" {
			fmt.Fprintf(f.out, "device %s is yours (%s)\n", f.device, a.Outcome)
			return nil
		}
		t := time.NewTimer(every)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("provision: device %s did not reach the cloud in time: %w", f.device, ctx.Err())
		case <-t.C:
		}
	}
}
