package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
)

// thingline ota: firmware packages and rollouts through the REST API
// (docs/ota.md).

func init() { register(newOTACmd) }

func newOTACmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "ota",
		Short: "Firmware updates: upload packages, assign them, run staged rollouts",
	}
	rollout := &cobra.Command{Use: "rollout", Short: "Staged rollouts: start, follow, pause, resume, abort"}
	rollout.AddCommand(newRolloutStartCmd(), newRolloutStatusCmd(), newRolloutListCmd(),
		newRolloutActionCmd("pause", "Pause a rollout: no further device is started"),
		newRolloutActionCmd("resume", "Resume a paused rollout (failures so far stop counting toward its threshold)"),
		newRolloutActionCmd("abort", "Abort a rollout: devices not started are canceled, updates in progress finish"))
	c.AddCommand(newOTAUploadCmd(), newOTAPackagesCmd(), newOTAAssignCmd(), rollout)
	return c
}

type otaPackage struct {
	ID                int64     `json:"id"`
	Title             string    `json:"title"`
	Version           string    `json:"version"`
	Size              int64     `json:"size"`
	Checksum          string    `json:"checksum"`
	ChecksumAlgorithm string    `json:"checksumAlgorithm"`
	CreatedAt         time.Time `json:"createdAt"`
}

func newOTAUploadCmd() *cobra.Command {
	var api apiClient
	var title, version, alg string
	c := &cobra.Command{
		Use:   "upload FILE --title T --version V",
		Short: "Upload a firmware image as a package (SHA-256 computed and kept; --checksum-algorithm for fw_checksum)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if title == "" || version == "" {
				return fmt.Errorf("--title and --version are required")
			}
			data, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			q := url.Values{"title": {title}, "version": {version}}
			if alg != "" {
				q.Set("checksumAlgorithm", alg)
			}
			b, err := api.do(cmd.Context(), "POST", "/api/v1/ota/packages?"+q.Encode(), "application/octet-stream", data)
			if err != nil {
				return err
			}
			var p otaPackage
			if err := json.Unmarshal(b, &p); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "package %d: %s %s, %d bytes, %s %s\n", p.ID, p.Title, p.Version, p.Size, p.ChecksumAlgorithm, p.Checksum)
			return nil
		},
	}
	api.addFlags(c)
	c.Flags().StringVar(&title, "title", "", "package title (fw_title; ThingsBoard SDKs refuse a title other than the running one)")
	c.Flags().StringVar(&version, "version", "", "package version (fw_version)")
	c.Flags().StringVar(&alg, "checksum-algorithm", "", "SHA256 (default), SHA384, SHA512, MD5, CRC32, MURMUR3_32 or MURMUR3_128")
	return c
}

func newOTAPackagesCmd() *cobra.Command {
	var api apiClient
	c := &cobra.Command{
		Use:   "packages",
		Short: "List firmware packages",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var v struct {
				Packages []otaPackage `json:"packages"`
			}
			if err := api.getJSON(cmd.Context(), "/api/v1/ota/packages", &v); err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tTITLE\tVERSION\tSIZE\tCHECKSUM\tUPLOADED")
			for _, p := range v.Packages {
				fmt.Fprintf(tw, "%d\t%s\t%s\t%d\t%s %s\t%s\n", p.ID, p.Title, p.Version, p.Size, p.ChecksumAlgorithm,
					p.Checksum, p.CreatedAt.UTC().Format(time.RFC3339))
			}
			return tw.Flush()
		},
	}
	api.addFlags(c)
	return c
}

func newOTAAssignCmd() *cobra.Command {
	var api apiClient
	var device, profile string
	var remove bool
	c := &cobra.Command{
		Use:   "assign PACKAGE (--device NAME | --profile P) | --remove (--device NAME | --profile P)",
		Short: "Assign a package to one device or to a profile (or remove the assignment)",
		Args:  cobra.RangeArgs(0, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if (device == "") == (profile == "") {
				return fmt.Errorf("give --device or --profile")
			}
			path := "/api/v1/devices/" + url.PathEscape(device) + "/ota"
			if profile != "" {
				path = "/api/v1/ota/profiles/" + url.PathEscape(profile)
			}
			if remove {
				_, err := api.do(cmd.Context(), "DELETE", path, "", nil)
				if err == nil {
					fmt.Fprintln(cmd.OutOrStdout(), "assignment removed")
				}
				return err
			}
			if len(args) != 1 {
				return fmt.Errorf("give the package id")
			}
			body, _ := json.Marshal(map[string]string{"package": args[0]})
			b, err := api.do(cmd.Context(), "PUT", path, "application/json", body)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), strings.TrimSpace(string(b)))
			return nil
		},
	}
	api.addFlags(c)
	c.Flags().StringVar(&device, "device", "", "device name")
	c.Flags().StringVar(&profile, "profile", "", "device profile")
	c.Flags().BoolVar(&remove, "remove", false, "remove the assignment instead")
	return c
}

// waveAmount passes "10%" as a string and 10 as a number.
func waveAmount(s string) any {
	if n, err := strconv.Atoi(s); err == nil {
		return n
	}
	return s
}

func newRolloutStartCmd() *cobra.Command {
	var api apiClient
	var profile, waves, success, failure string
	c := &cobra.Command{
		Use:   "start PACKAGE (DEVICE... | --profile P)",
		Short: "Start a staged rollout of a package to devices or a profile",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			body := map[string]any{"package": args[0]}
			if profile != "" {
				body["profile"] = profile
			}
			if len(args) > 1 {
				body["devices"] = args[1:]
			}
			if waves != "" {
				var ws []any
				for _, w := range strings.Split(waves, ",") {
					ws = append(ws, waveAmount(strings.TrimSpace(w)))
				}
				body["waves"] = ws
			}
			if success != "" {
				body["successThreshold"] = waveAmount(success)
			}
			if failure != "" {
				body["failureThreshold"] = waveAmount(failure)
			}
			b, _ := json.Marshal(body)
			out, err := api.do(cmd.Context(), "POST", "/api/v1/ota/rollouts", "application/json", b)
			if err != nil {
				return err
			}
			var r rolloutView
			if err := json.Unmarshal(out, &r); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "rollout %d started: %d devices in waves %v, next wave at %d%% updated, paused at %d failures\n",
				r.ID, r.Total, r.Waves, r.SuccessPercent, r.FailureMax)
			return nil
		},
	}
	api.addFlags(c)
	c.Flags().StringVar(&profile, "profile", "", "roll out to every device of this profile")
	c.Flags().StringVar(&waves, "waves", "", `wave sizes, counts or percentages: "1,10%,50%" (the rest is a last wave)`)
	c.Flags().StringVar(&success, "success-threshold", "", `share of a wave UPDATED before the next starts, "90%" (default 100%)`)
	c.Flags().StringVar(&failure, "failure-threshold", "", `failures that pause the rollout, a count or "5%" (default 10%)`)
	return c
}

type rolloutView struct {
	ID             int64  `json:"id"`
	Package        int64  `json:"package"`
	Status         string `json:"status"`
	PauseReason    string `json:"pauseReason"`
	Waves          []int  `json:"waves"`
	CurrentWave    int    `json:"currentWave"`
	Total          int    `json:"total"`
	SuccessPercent int    `json:"successPercent"`
	FailureMax     int    `json:"failureMax"`
	Target         struct {
		Title   string `json:"title"`
		Version string `json:"version"`
	} `json:"target"`
	Progress struct {
		Total, Queued, InProgress, Updated, Failed, Canceled int
		Waves                                                []struct {
			Wave, Size, Queued, InProgress, Updated, Failed, Canceled int
		}
	} `json:"progress"`
	Devices []struct {
		Device    string    `json:"device"`
		Wave      int       `json:"wave"`
		State     string    `json:"state"`
		Error     string    `json:"error"`
		UpdatedAt time.Time `json:"updatedAt"`
	} `json:"devices"`
}

func printRollout(w io.Writer, r rolloutView, devices bool) error {
	fmt.Fprintf(w, "rollout %d: %s, package %d (%s %s), wave %d of %d\n", r.ID, r.Status, r.Package,
		r.Target.Title, r.Target.Version, r.CurrentWave+1, len(r.Waves))
	if r.PauseReason != "" {
		fmt.Fprintf(w, "  paused: %s\n", r.PauseReason)
	}
	p := r.Progress
	fmt.Fprintf(w, "  %d devices: %d updated, %d failed, %d in progress, %d queued, %d canceled\n",
		p.Total, p.Updated, p.Failed, p.InProgress, p.Queued, p.Canceled)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "WAVE\tSIZE\tUPDATED\tFAILED\tIN PROGRESS\tQUEUED\tCANCELED")
	for _, wv := range p.Waves {
		fmt.Fprintf(tw, "%d\t%d\t%d\t%d\t%d\t%d\t%d\n", wv.Wave+1, wv.Size, wv.Updated, wv.Failed, wv.InProgress, wv.Queued, wv.Canceled)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if !devices {
		return nil
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DEVICE\tWAVE\tSTATE\tSINCE\tERROR")
	for _, d := range r.Devices {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\n", d.Device, d.Wave+1, d.State, d.UpdatedAt.UTC().Format(time.RFC3339), d.Error)
	}
	return tw.Flush()
}

func newRolloutStatusCmd() *cobra.Command {
	var api apiClient
	var devices bool
	c := &cobra.Command{
		Use:   "status ID",
		Short: "Show a rollout's progress per wave (and per device with --devices)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var r rolloutView
			if err := api.getJSON(cmd.Context(), "/api/v1/ota/rollouts/"+url.PathEscape(args[0]), &r); err != nil {
				return err
			}
			return printRollout(cmd.OutOrStdout(), r, devices)
		},
	}
	api.addFlags(c)
	c.Flags().BoolVar(&devices, "devices", false, "list every device with its state")
	return c
}

func newRolloutListCmd() *cobra.Command {
	var api apiClient
	var status string
	c := &cobra.Command{
		Use:   "list",
		Short: "List rollouts, newest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			path := "/api/v1/ota/rollouts"
			if status != "" {
				path += "?status=" + url.QueryEscape(status)
			}
			var v struct {
				Rollouts []rolloutView `json:"rollouts"`
			}
			if err := api.getJSON(cmd.Context(), path, &v); err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tPACKAGE\tSTATUS\tWAVE\tDEVICES\tREASON")
			for _, r := range v.Rollouts {
				fmt.Fprintf(tw, "%d\t%d\t%s\t%d/%d\t%d\t%s\n", r.ID, r.Package, r.Status, r.CurrentWave+1, len(r.Waves), r.Total, r.PauseReason)
			}
			return tw.Flush()
		},
	}
	api.addFlags(c)
	c.Flags().StringVar(&status, "status", "", "only running, paused, completed or aborted rollouts")
	return c
}

func newRolloutActionCmd(action, short string) *cobra.Command {
	var api apiClient
	var retryFailed bool
	c := &cobra.Command{
		Use:   action + " ID",
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var body []byte
			if retryFailed {
				body = []byte(`{"retryFailed":true}`)
			}
			out, err := api.do(cmd.Context(), "POST", "/api/v1/ota/rollouts/"+url.PathEscape(args[0])+"/"+action, "application/json", body)
			if err != nil {
				return err
			}
			var r rolloutView
			if err := json.Unmarshal(out, &r); err != nil {
				return err
			}
			return printRollout(cmd.OutOrStdout(), r, false)
		},
	}
	api.addFlags(c)
	if action == "resume" {
		c.Flags().BoolVar(&retryFailed, "retry-failed", false, "queue the failed devices again")
	}
	return c
}
