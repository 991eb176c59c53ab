package cli

import (
	"context"
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
	"github.com/spf13/pflag"

	"github.com/thingline/thingline/node"
	"github.com/thingline/thingline/store"
)

func init() {
	register(newAlarmCmd)
	register(newProfileCmd)
}

// callJSON sends body (nil: none) as JSON and decodes a JSON answer into
// out (nil: ignored).
func (a *apiClient) callJSON(ctx context.Context, method, path string, body, out any) error {
	var b []byte
	if body != nil {
		var err error
		if b, err = json.Marshal(body); err != nil {
			return err
		}
	}
	data, err := a.do(ctx, method, path, "application/json", b)
	if err != nil || out == nil || len(data) == 0 {
		return err
	}
	return json.Unmarshal(data, out)
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// alarmView is the part of an alarm the list prints.
type alarmView struct {
	ID        int64           `json:"id"`
	Device    string          `json:"device"`
	Type      string          `json:"type"`
	Severity  string          `json:"severity"`
	Status    string          `json:"status"`
	Count     int64           `json:"count"`
	StartTime time.Time       `json:"startTime"`
	LastTime  time.Time       `json:"lastTime"`
	Detail    json.RawMessage `json:"detail"`
}

func newAlarmCmd() *cobra.Command {
	var rf apiClient
	c := &cobra.Command{
		Use:   "alarm",
		Short: "List, acknowledge and clear device alarms; manage alarm rules",
	}

	var device, status, severity, typ string
	var limit int
	var asJSON bool
	list := &cobra.Command{
		Use:   "list",
		Short: "List alarms, newest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			v := url.Values{}
			for k, s := range map[string]string{"device": device, "status": status, "severity": strings.ToUpper(severity), "type": typ} {
				if s != "" {
					v.Set(k, s)
				}
			}
			v.Set("limit", strconv.Itoa(limit))
			var raw json.RawMessage
			if err := rf.callJSON(cmd.Context(), "GET", "/api/v1/alarms?"+v.Encode(), nil, &raw); err != nil {
				return err
			}
			if asJSON {
				_, err := cmd.OutOrStdout().Write(append(raw, '\n'))
				return err
			}
			var resp struct{ Alarms []alarmView }
			if err := json.Unmarshal(raw, &resp); err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tDEVICE\tTYPE\tSEVERITY\tSTATUS\tCOUNT\tSTARTED\tLAST")
			for _, a := range resp.Alarms {
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", a.ID, a.Device, a.Type, a.Severity, a.Status, a.Count,
					a.StartTime.Local().Format(time.DateTime), a.LastTime.Local().Format(time.DateTime))
			}
			return tw.Flush()
		},
	}
	f := list.Flags()
	f.StringVar(&device, "device", "", "only this device")
	f.StringVar(&status, "status", "", "ACTIVE, CLEARED, ACK, UNACK, ANY, or ACTIVE_UNACK, ACTIVE_ACK, CLEARED_UNACK, CLEARED_ACK")
	f.StringVar(&severity, "severity", "", "CRITICAL, MAJOR, MINOR, WARNING or INDETERMINATE")
	f.StringVar(&typ, "type", "", "only this alarm type")
	f.IntVar(&limit, "limit", 100, "at most this many (1-1000)")
	f.BoolVar(&asJSON, "json", false, "print the API's JSON")

	action := func(verb, short string) *cobra.Command {
		return withAPI(&rf, &cobra.Command{
			Use:   verb + " ID...",
			Short: short,
			Args:  cobra.MinimumNArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				for _, id := range args {
					if _, err := strconv.ParseInt(id, 10, 64); err != nil {
						return fmt.Errorf("alarm %s: %q is not an alarm id", verb, id)
					}
					var a alarmView
					if err := rf.callJSON(cmd.Context(), "POST", "/api/v1/alarms/"+id+"/"+verb, nil, &a); err != nil {
						return err
					}
					fmt.Fprintf(cmd.OutOrStdout(), "%d %s %s: %s\n", a.ID, a.Device, a.Type, a.Status)
				}
				return nil
			},
		})
	}
	c.AddCommand(withAPI(&rf, list), action("ack", "Acknowledge alarms"), action("clear", "Clear alarms"), newAlarmRulesCmd(&rf))
	return c
}

func newAlarmRulesCmd(rf *apiClient) *cobra.Command {
	c := &cobra.Command{
		Use:   "rules",
		Short: "Alarm rules of device profiles: a telemetry key, a condition, a duration",
	}
	c.AddCommand(withAPI(rf, &cobra.Command{
		Use:   "list PROFILE",
		Short: "Print a profile's alarm rules (JSON)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var out json.RawMessage
			if err := rf.callJSON(cmd.Context(), "GET", "/api/v1/profiles/"+url.PathEscape(args[0])+"/alarm-rules", nil, &out); err != nil {
				return err
			}
			var v any
			json.Unmarshal(out, &v)
			return printJSON(cmd.OutOrStdout(), v)
		},
	}))
	var typ, key, severity, raise, clear string
	var raiseFor, clearFor time.Duration
	add := &cobra.Command{
		Use:   "add PROFILE --type T --key K --raise '>40' [--raise-for 60s] [--clear '<=38' --clear-for 60s]",
		Short: "Add an alarm rule to a profile",
		Example: `  thingline alarm rules add default --type high-temperature --key temperature \
    --severity MAJOR --raise '>40' --raise-for 60s --clear '<=38' --clear-for 60s`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			rc, err := parseCondition(raise, raiseFor)
			if err != nil {
				return fmt.Errorf("--raise: %w", err)
			}
			rule := map[string]any{"type": typ, "key": key, "severity": strings.ToUpper(severity), "raise": rc}
			if clear != "" {
				cc, err := parseCondition(clear, clearFor)
				if err != nil {
					return fmt.Errorf("--clear: %w", err)
				}
				rule["clear"] = cc
			}
			var out json.RawMessage
			if err := rf.callJSON(cmd.Context(), "POST", "/api/v1/profiles/"+url.PathEscape(args[0])+"/alarm-rules", rule, &out); err != nil {
				return err
			}
			var v any
			json.Unmarshal(out, &v)
			return printJSON(cmd.OutOrStdout(), v)
		},
	}
	f := add.Flags()
	f.StringVar(&typ, "type", "", "the alarm type the rule raises, e.g. high-temperature")
	f.StringVar(&key, "key", "", "the telemetry key")
	f.StringVar(&severity, "severity", "MAJOR", "CRITICAL, MAJOR, MINOR, WARNING or INDETERMINATE")
	f.StringVar(&raise, "raise", "", "raise condition: an operator (> >= < <= == !=) and a JSON value, e.g. '>40'")
	f.DurationVar(&raiseFor, "raise-for", 0, "how long the raise condition must hold")
	f.StringVar(&clear, "clear", "", "clear condition, e.g. '<=38'; none: cleared by a person")
	f.DurationVar(&clearFor, "clear-for", 0, "how long the clear condition must hold")
	add.MarkFlagRequired("type")
	add.MarkFlagRequired("key")
	add.MarkFlagRequired("raise")
	c.AddCommand(withAPI(rf, add), withAPI(rf, &cobra.Command{
		Use:   "delete PROFILE ID",
		Short: "Remove an alarm rule",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := strconv.ParseInt(args[1], 10, 64); err != nil {
				return fmt.Errorf("%q is not a rule id", args[1])
			}
			return rf.callJSON(cmd.Context(), "DELETE", "/api/v1/profiles/"+url.PathEscape(args[0])+"/alarm-rules/"+args[1], nil, nil)
		},
	}))
	return c
}

// parseCondition reads "OP VALUE" (">40", "<= 38", "==\"on\"").
func parseCondition(s string, d time.Duration) (map[string]any, error) {
	s = strings.TrimSpace(s)
	for _, op := range []string{">=", "<=", "==", "!=", ">", "<"} {
		if rest, ok := strings.CutPrefix(s, op); ok {
			v := strings.TrimSpace(rest)
			if !json.Valid([]byte(v)) {
				return nil, fmt.Errorf("%q is not a JSON value (quote strings: '==\"on\"')", v)
			}
			c := map[string]any{"op": op, "value": json.RawMessage(v)}
			if d > 0 {
				c["duration"] = d.String()
			}
			return c, nil
		}
	}
	return nil, errors.New("want an operator (> >= < <= == !=) followed by a value")
}

func newProfileCmd() *cobra.Command {
	var rf apiClient
	c := &cobra.Command{
		Use:   "profile",
		Short: "Operational settings of device profiles",
	}
	var inactivity, telemetry, events string
	settings := &cobra.Command{
		Use:   "settings PROFILE [--inactivity-timeout D] [--retention-telemetry D] [--retention-events D]",
		Short: "Print a profile's settings, or change them (durations like 10m, 2160h or 90d; 0 means the node's default)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			path := "/api/v1/profiles/" + url.PathEscape(args[0]) + "/settings"
			var cur map[string]any
			if err := rf.callJSON(cmd.Context(), "GET", path, nil, &cur); err != nil {
				return err
			}
			f := cmd.Flags()
			changed := false
			for flag, field := range map[string]string{"inactivity-timeout": "inactivityTimeout", "retention-telemetry": "telemetryRetention", "retention-events": "eventRetention"} {
				if f.Changed(flag) {
					v, _ := f.GetString(flag)
					cur[field] = v
					changed = true
				}
			}
			if changed {
				if err := rf.callJSON(cmd.Context(), "PUT", path, cur, &cur); err != nil {
					return err
				}
			}
			return printJSON(cmd.OutOrStdout(), cur)
		},
	}
	f := settings.Flags()
	f.StringVar(&inactivity, "inactivity-timeout", "", "a device silent this long is inactive and raises the offline alarm")
	f.StringVar(&telemetry, "retention-telemetry", "", "telemetry older than this is removed")
	f.StringVar(&events, "retention-events", "", "events older than this are removed")
	c.AddCommand(withAPI(&rf, settings))
	return c
}

// withAPI gives c the API flags of a.
func withAPI(a *apiClient, c *cobra.Command) *cobra.Command {
	a.addFlags(c)
	return c
}

// daysDuration is a duration flag that also reads whole days ("90d").
type daysDuration struct{ d *time.Duration }

func (v daysDuration) String() string {
	if v.d == nil || *v.d == 0 {
		return "0"
	}
	if *v.d%(24*time.Hour) == 0 {
		return strconv.FormatInt(int64(*v.d/(24*time.Hour)), 10) + "d"
	}
	return v.d.String()
}

func (v daysDuration) Set(s string) error {
	d, err := store.ParseDuration(s)
	if err != nil {
		return err
	}
	*v.d = d
	return nil
}

func (daysDuration) Type() string { return "duration" }

// addOperationFlags adds serve's flags of device state, alarms and
// retention.
func addOperationFlags(f *pflag.FlagSet, cfg *node.Config) {
	f.DurationVar(&cfg.Alarms.InactivityTimeout, "inactivity-timeout", 10*time.Minute, "a device silent this long is inactive and raises the offline alarm (profiles may set their own)")
	f.Var(daysDuration{&cfg.Retention.Telemetry}, "retention-telemetry", "remove telemetry older than this, e.g. 90d (0: keep; profiles may set their own)")
	f.Var(daysDuration{&cfg.Retention.Events}, "retention-events", "remove events older than this, e.g. 180d (0: keep; profiles may set their own)")
	f.Var(daysDuration{&cfg.Retention.Alarms}, "retention-alarms", "remove alarms cleared longer ago than this, e.g. 365d (0: keep)")
	f.Var(daysDuration{&cfg.Retention.RPCs}, "retention-rpc", "remove RPC calls finished longer ago than this, e.g. 30d (0: keep)")
	f.Var(daysDuration{&cfg.Retention.OTAHistory}, "retention-ota-history", "remove OTA state changes older than this, e.g. 365d (0: keep)")
}
