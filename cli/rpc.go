package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
)

// Operator commands for server-side RPC and attributes, through the REST
// API. See docs/rpc.md.

func init() {
	register(newRPCCmd)
	register(newAttributesCmd)
}

func newRPCCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "rpc",
		Short: "Server-side RPC to devices: send, follow, list, delete persistent calls",
	}
	c.AddCommand(newRPCSendCmd(), newRPCGetCmd(), newRPCListCmd(), newRPCDeleteCmd())
	return c
}

// rpcCall is the API's persistent call, as far as the CLI shows it.
type rpcCall struct {
	ID        int64           `json:"id"`
	Device    string          `json:"device"`
	Method    string          `json:"method"`
	Status    string          `json:"status"`
	Attempts  int             `json:"attempts"`
	Retries   int             `json:"retries"`
	CreatedAt time.Time       `json:"createdTime"`
	ExpiresAt time.Time       `json:"expirationTime"`
	Response  json.RawMessage `json:"response,omitempty"`
	Error     string          `json:"error,omitempty"`
}

func (r rpcCall) final() bool {
	return r.Status == "SUCCESSFUL" || r.Status == "EXPIRED" || r.Status == "FAILED"
}

func newRPCSendCmd() *cobra.Command {
	var api apiClient
	var persistent, oneway, wait bool
	var timeout, expires time.Duration
	var retries int
	c := &cobra.Command{
		Use:   "send DEVICE METHOD [PARAMS-JSON]",
		Short: "Call METHOD on DEVICE; --persistent queues it for an offline device",
		Long: `Without --persistent the device must be online and its answer is printed.
With --persistent the call is stored and its id printed; it is sent when the
device subscribes to RPC requests, retried --retries times, and expires after
--expires. --wait follows it until it completes.`,
		Args: cobra.RangeArgs(2, 3),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := map[string]any{"method": args[1], "timeoutMs": timeout.Milliseconds()}
			if len(args) == 3 {
				if !json.Valid([]byte(args[2])) {
					return fmt.Errorf("PARAMS-JSON %q is not JSON", args[2])
				}
				req["params"] = json.RawMessage(args[2])
			}
			if persistent {
				req["persistent"], req["oneway"], req["retries"] = true, oneway, retries
				req["expirationTime"] = time.Now().Add(expires).UnixMilli()
			} else if oneway || wait || cmd.Flags().Changed("retries") || cmd.Flags().Changed("expires") {
				return errors.New("--oneway, --retries, --expires and --wait apply to --persistent calls")
			}
			body, _ := json.Marshal(req)
			out, err := api.do(cmd.Context(), "POST", devicePath(args[0], "/rpc"), "application/json", body)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if !persistent {
				return printJSON(w, json.RawMessage(out))
			}
			var call rpcCall
			if err := json.Unmarshal(out, &call); err != nil {
				return fmt.Errorf("undecodable answer: %w", err)
			}
			if !wait {
				fmt.Fprintf(w, "%d %s\n", call.ID, call.Status)
				return nil
			}
			return followRPC(cmd, &api, call, w)
		},
	}
	api.addFlags(c)
	f := c.Flags()
	f.BoolVar(&persistent, "persistent", false, "store the call and send it when the device can take it")
	f.BoolVar(&oneway, "oneway", false, "persistent: no answer expected (SUCCESSFUL once delivered)")
	f.BoolVar(&wait, "wait", false, "persistent: wait until the call completes and print it")
	f.DurationVar(&timeout, "timeout", 10*time.Second, "bound of one attempt (and of a call without --persistent)")
	f.DurationVar(&expires, "expires", 24*time.Hour, "persistent: the call expires this long from now")
	f.IntVar(&retries, "retries", 2, "persistent: attempts after the first")
	return c
}

// followRPC polls a persistent call until it is final and prints it.
func followRPC(cmd *cobra.Command, api *apiClient, call rpcCall, w io.Writer) error {
	last := ""
	for {
		if call.Status != last {
			fmt.Fprintf(w, "%d %s\n", call.ID, call.Status)
			last = call.Status
		}
		if call.final() {
			break
		}
		select {
		case <-cmd.Context().Done():
			return cmd.Context().Err()
		case <-time.After(500 * time.Millisecond):
		}
		if err := api.getJSON(cmd.Context(), rpcPath(call.ID, call.Device), &call); err != nil {
			return err
		}
	}
	if call.Response != nil {
		return printJSON(w, call.Response)
	}
	if call.Status != "SUCCESSFUL" {
		return fmt.Errorf("rpc %d %s: %s", call.ID, call.Status, call.Error)
	}
	return nil
}

func rpcPath(id int64, device string) string {
	p := "/api/v1/rpc/" + strconv.FormatInt(id, 10)
	if device != "" {
		p += "?device=" + url.QueryEscape(device)
	}
	return p
}

func parseRPCID(s string) (int64, error) {
	id, err := strconv.ParseInt(s, 10, 64)
	if err != nil || id <= 0 {
		return 0, fmt.Errorf("rpc id %q: want a positive integer", s)
	}
	return id, nil
}

func newRPCGetCmd() *cobra.Command {
	var api apiClient
	var device string
	c := &cobra.Command{
		Use:   "get ID",
		Short: "Show a persistent call: status, attempts, response",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := parseRPCID(args[0])
			if err != nil {
				return err
			}
			out, err := api.do(cmd.Context(), "GET", rpcPath(id, device), "", nil)
			if err != nil {
				return err
			}
			return printJSON(cmd.OutOrStdout(), json.RawMessage(out))
		},
	}
	api.addFlags(c)
	c.Flags().StringVar(&device, "device", "", "the call's device (needed by a device owner)")
	return c
}

func newRPCListCmd() *cobra.Command {
	var api apiClient
	var status string
	var since time.Duration
	var limit int
	c := &cobra.Command{
		Use:   "list DEVICE",
		Short: "List a device's persistent calls, newest first",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			q := url.Values{"limit": {strconv.Itoa(limit)}}
			if status != "" {
				q.Set("status", status)
			}
			if since > 0 {
				q.Set("since", strconv.FormatInt(time.Now().Add(-since).UnixMilli(), 10))
			}
			var v struct {
				RPC []rpcCall `json:"rpc"`
			}
			if err := api.getJSON(cmd.Context(), devicePath(args[0], "/rpc?")+q.Encode(), &v); err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tMETHOD\tSTATUS\tATTEMPTS\tCREATED\tEXPIRES\tERROR")
			for _, r := range v.RPC {
				fmt.Fprintf(tw, "%d\t%s\t%s\t%d/%d\t%s\t%s\t%s\n", r.ID, r.Method, r.Status, r.Attempts, r.Retries+1,
					r.CreatedAt.UTC().Format(time.RFC3339), r.ExpiresAt.UTC().Format(time.RFC3339), r.Error)
			}
			return tw.Flush()
		},
	}
	api.addFlags(c)
	f := c.Flags()
	f.StringVar(&status, "status", "", "only these statuses (comma-separated: QUEUED,SENT,DELIVERED,SUCCESSFUL,TIMEOUT,EXPIRED,FAILED)")
	f.DurationVar(&since, "since", 0, "only calls created within this long")
	f.IntVar(&limit, "limit", 100, "at most this many")
	return c
}

func newRPCDeleteCmd() *cobra.Command {
	var api apiClient
	var device string
	c := &cobra.Command{
		Use:   "delete ID",
		Short: "Delete a persistent call; one not yet complete is cancelled",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := parseRPCID(args[0])
			if err != nil {
				return err
			}
			if _, err := api.do(cmd.Context(), "DELETE", rpcPath(id, device), "", nil); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "deleted rpc %d\n", id)
			return nil
		},
	}
	api.addFlags(c)
	c.Flags().StringVar(&device, "device", "", "the call's device (needed by a device owner)")
	return c
}

func newAttributesCmd() *cobra.Command {
	c := &cobra.Command{
		Use:     "attributes",
		Aliases: []string{"attrs"},
		Short:   "A device's attributes: client (reported), shared (pushed to it) and server (private)",
	}
	c.AddCommand(newAttrGetCmd(), newAttrSetCmd(), newAttrDeleteCmd())
	return c
}

func newAttrGetCmd() *cobra.Command {
	var api apiClient
	var scope, keys string
	c := &cobra.Command{
		Use:   "get DEVICE",
		Short: "Print a device's attributes, by scope",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			q := url.Values{}
			if scope != "" {
				q.Set("scope", scope)
			}
			if keys != "" {
				q.Set("keys", keys)
			}
			path := devicePath(args[0], "/attributes")
			if len(q) > 0 {
				path += "?" + q.Encode()
			}
			out, err := api.do(cmd.Context(), "GET", path, "", nil)
			if err != nil {
				return err
			}
			return printJSON(cmd.OutOrStdout(), json.RawMessage(out))
		},
	}
	api.addFlags(c)
	c.Flags().StringVar(&scope, "scope", "", "client, shared or server (default all three)")
	c.Flags().StringVar(&keys, "keys", "", "comma-separated keys (default all)")
	return c
}

func newAttrSetCmd() *cobra.Command {
	var api apiClient
	var scope string
	c := &cobra.Command{
		Use:   "set DEVICE KEY=VALUE...",
		Short: "Set shared (default) or server attributes; shared ones are pushed to the device",
		Long: `Each VALUE is taken as JSON when it is JSON (30, true, "text", {"a":1})
and as a string otherwise (red).`,
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			kv := map[string]json.RawMessage{}
			for _, a := range args[1:] {
				k, v, ok := strings.Cut(a, "=")
				if !ok || k == "" {
					return fmt.Errorf("%q: want KEY=VALUE", a)
				}
				if json.Valid([]byte(v)) && v != "" {
					kv[k] = json.RawMessage(v)
				} else {
					kv[k], _ = json.Marshal(v)
				}
			}
			body, _ := json.Marshal(kv)
			out, err := api.do(cmd.Context(), "POST", devicePath(args[0], "/attributes?scope=")+url.QueryEscape(scope), "application/json", body)
			if err != nil {
				return err
			}
			return printJSON(cmd.OutOrStdout(), json.RawMessage(out))
		},
	}
	api.addFlags(c)
	c.Flags().StringVar(&scope, "scope", "shared", "shared or server")
	return c
}

func newAttrDeleteCmd() *cobra.Command {
	var api apiClient
	var scope string
	c := &cobra.Command{
		Use:   "delete DEVICE KEY...",
		Short: `Delete attributes; a shared deletion is pushed to the device as {"deleted":[…]}`,
		Args:  cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			q := url.Values{"scope": {scope}, "keys": {strings.Join(args[1:], ",")}}
			out, err := api.do(cmd.Context(), "DELETE", devicePath(args[0], "/attributes?")+q.Encode(), "", nil)
			if err != nil {
				return err
			}
			return printJSON(cmd.OutOrStdout(), json.RawMessage(out))
		},
	}
	api.addFlags(c)
	c.Flags().StringVar(&scope, "scope", "shared", "shared, server or client")
	return c
}
