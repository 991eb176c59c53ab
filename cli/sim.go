package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/thingline/thingline/twin"
)

func init() { register(newSimCmd) }

func newSimCmd() *cobra.Command {
	var (
		cfg     twin.SimConfig
		summary time.Duration
		verbose bool
	)
	c := &cobra.Command{
		Use:   "sim",
		Short: "Run many already-provisioned twins from the factory's output in one process",
		Long: `sim loads the first --count unit directories of the factory's output (from
each unit's spiffs.bin, or its loose files when there is no image) and runs
them as twins that are already provisioned: each connects to --broker with
its own certificate and publishes telemetry every --interval. Connections
are opened at most --ramp per second. A summary line is printed every
--summary: sessions up, connects, messages sent and acknowledged, errors.
The twins take firmware updates as the firmware does; --ota-fail makes a
share of them (--ota-fail-share) fail theirs, to see how a rollout meets
such a fleet.`,
		Example: `  thingline sim --units out --count 1000 --broker mqtts://127.0.0.1:8883 --interval 1s --ramp 500`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cfg.Units == "" || cfg.Broker == "" {
				return errors.New("sim: --units and --broker are required")
			}
			if cmd.Flags().Changed("ota-fail-share") && cfg.OTAFail == "" {
				return errors.New("sim: --ota-fail-share needs --ota-fail")
			}
			if cfg.OTAFailShare <= 0 || cfg.OTAFailShare > 1 {
				return fmt.Errorf("sim: --ota-fail-share %v is not above 0 and at most 1", cfg.OTAFailShare)
			}
			out := cmd.OutOrStdout()
			if verbose {
				cfg.Logf = consoleLogger(cmd.ErrOrStderr())
			}
			start := time.Now()
			s, err := twin.NewSim(cfg)
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "sim: %d twins loaded in %v; connecting to %s at %.0f/s\n",
				s.Len(), time.Since(start).Round(time.Millisecond), cfg.Broker, cfg.Ramp)
			ctx, cancel := context.WithCancel(cmd.Context())
			defer cancel()
			done := make(chan struct{})
			go func() {
				defer close(done)
				printSummaries(ctx, out, s, summary)
			}()
			err = s.Run(ctx)
			cancel()
			<-done
			printSummary(out, s, time.Since(start), nil)
			return err
		},
	}
	f := c.Flags()
	f.StringVar(&cfg.Units, "units", "", "the factory's output directory (one directory per unit)")
	f.IntVar(&cfg.Count, "count", 1, "number of twins: the first N units by name")
	f.StringVar(&cfg.Broker, "broker", "", "cloud address, mqtts://HOST:PORT; several, comma-separated, are tried in turn when one cannot be reached")
	f.StringVar(&cfg.ServerName, "server-name", "", "name the server certificate must carry (default: the broker's host)")
	f.DurationVar(&cfg.Interval, "interval", time.Second, "telemetry period of each twin")
	f.Float64Var(&cfg.Ramp, "ramp", 200, "connection attempts per second across the fleet")
	f.DurationVar(&cfg.Keepalive, "keepalive", 120*time.Second, "MQTT keepalive")
	f.DurationVar(&cfg.BackoffMax, "backoff-max", time.Minute, "longest delay between reconnection attempts")
	f.DurationVar(&cfg.AttrEvery, "uptime-every", time.Minute, "period of each twin's uptime attribute")
	f.IntVar(&cfg.Workers, "workers", 0, "scheduler workers (default 4 per CPU)")
	f.StringVar(&cfg.OTAFail, "ota-fail", "", "make firmware updates fail, for rollout tests: download, verify, reboot (once, mid-download) or silent")
	f.Float64Var(&cfg.OTAFailShare, "ota-fail-share", 1, "the share of the twins whose updates fail with --ota-fail, spread evenly (0 to 1)")
	f.DurationVar(&summary, "summary", 5*time.Second, "period of the summary line")
	f.BoolVarP(&verbose, "verbose", "v", false, "log every twin's connects and errors to stderr")
	return c
}

type simCounts struct{ sent, acked int64 }

func printSummaries(ctx context.Context, w io.Writer, s *twin.Sim, every time.Duration) {
	if every <= 0 {
		return
	}
	t := time.NewTicker(every)
	defer t.Stop()
	start := time.Now()
	var prev simCounts
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			prev = printSummary(w, s, time.Since(start), &prev)
		}
	}
}

// printSummary prints one line; with prev it adds the rates since then.
func printSummary(w io.Writer, s *twin.Sim, elapsed time.Duration, prev *simCounts) simCounts {
	st := s.Stats()
	now := simCounts{sent: st.Sent.Load(), acked: st.Acked.Load()}
	line := fmt.Sprintf("sim %6.0fs: connected %d/%d, connects %d, sent %d, acked %d, skipped %d, errors %d, rpc %d",
		elapsed.Seconds(), st.Connected.Load(), s.Len(), st.Connects.Load(), now.sent, now.acked,
		st.Skipped.Load(), st.Errors.Load(), st.RPCs.Load())
	if prev != nil && prev.sent > 0 {
		line += fmt.Sprintf(" (+%d sent, +%d acked)", now.sent-prev.sent, now.acked-prev.acked)
	}
	fmt.Fprintln(w, line)
	return now
}
