package ota

import (
	"context"
	"fmt"
	"time"

	"github.com/thingline/thingline/store"
)

// sweep is the periodic work: reports the queue dropped, deadlines passed,
// rollouts to move on and queued devices to start.
func (e *Engine) sweep(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	now := e.cfg.Now()
	if e.missed.Swap(false) {
		e.reconcile(ctx)
	}
	due, err := e.cfg.Store.ListOTADevices(ctx, store.OTADeviceQuery{DueBefore: now})
	if err != nil {
		e.log.Warn("ota: listing due updates", "err", err)
	}
	for _, d := range due {
		dev, err := e.cfg.Store.GetDeviceByID(ctx, d.DeviceID)
		if err != nil {
			continue
		}
		if err := e.apply(ctx, dev, event{kind: evTimeout, online: dev.Online}, 0); err != nil {
			e.log.Warn("ota: timing out", "device", dev.Name, "err", err)
		}
	}
	rollouts, err := e.cfg.Store.ListOTARollouts(ctx, store.RolloutRunning)
	if err != nil {
		e.log.Warn("ota: listing rollouts", "err", err)
	}
	running := map[int64]store.OTARollout{}
	for _, r := range rollouts {
		if r, ok := e.advance(ctx, r); ok {
			running[r.ID] = r
		}
	}
	for _, d := range e.startable(ctx, running) {
		dev, err := e.cfg.Store.GetDeviceByID(ctx, d.DeviceID)
		if err != nil {
			continue
		}
		if err := e.apply(ctx, dev, event{kind: evInitiate}, 0); err != nil {
			e.log.Warn("ota: initiating", "device", dev.Name, "err", err)
		}
	}
}

// startable reads the queued rows that may start now: those of no rollout
// and those of the running rollouts' started waves, each query bounded
// (1000 rows). The rows that must wait (a paused rollout, a later wave)
// are not read, however many: they would cost every tick, and could
// fill the bound ahead of the rows to start.
func (e *Engine) startable(ctx context.Context, running map[int64]store.OTARollout) []store.OTADevice {
	queued := []string{store.OTAQueued}
	rows, err := e.cfg.Store.ListOTADevices(ctx, store.OTADeviceQuery{NoRollout: true, States: queued})
	if err != nil {
		e.log.Warn("ota: listing queued updates", "err", err)
	}
	for _, r := range running {
		more, err := e.cfg.Store.ListOTADevices(ctx, store.OTADeviceQuery{RolloutID: r.ID, FirstWaves: r.CurrentWave + 1, States: queued})
		if err != nil {
			e.log.Warn("ota: listing queued updates", "rollout", r.ID, "err", err)
		}
		rows = append(rows, more...)
	}
	return rows
}

// reconcile replays, from the stored telemetry, the reports of devices in
// progress that the full queue dropped: what the gateway acknowledged is
// stored, so nothing a device said is lost to the engine.
func (e *Engine) reconcile(ctx context.Context) {
	rows, err := e.cfg.Store.ListOTADevices(ctx, store.OTADeviceQuery{States: []string{store.OTAInitiated,
		store.OTADownloading, store.OTADownloaded, store.OTAVerified, store.OTAUpdating}})
	if err != nil {
		e.missed.Store(true)
		return
	}
	for _, d := range rows {
		dev, err := e.cfg.Store.GetDeviceByID(ctx, d.DeviceID)
		if err != nil {
			continue
		}
		latest, err := e.cfg.Store.LatestTelemetry(ctx, d.DeviceID, []string{"fw_state", "fw_error", "current_fw_title", "current_fw_version"})
		if err != nil {
			continue
		}
		st, ok := latest["fw_state"]
		if !ok || st.TS < d.StateAt.UnixMilli() {
			continue
		}
		ev := event{kind: evReport, at: time.UnixMilli(st.TS), state: str(st.Value), errText: str(latest["fw_error"].Value),
			title: str(latest["current_fw_title"].Value), version: str(latest["current_fw_version"].Value)}
		if err := e.apply(ctx, dev, ev, 0); err != nil {
			e.log.Warn("ota: reconciling", "device", dev.Name, "err", err)
		}
	}
}

// advance moves a running rollout on: pause at the failure threshold,
// start the next wave once the current one reached the success
// threshold, pause when a finished wave fell short, complete when every
// member is done. It returns the rollout as stored and whether it still
// runs.
func (e *Engine) advance(ctx context.Context, r store.OTARollout) (store.OTARollout, bool) {
	p, err := e.rolloutProgress(ctx, r)
	if err != nil {
		e.log.Warn("ota: reading rollout", "rollout", r.ID, "err", err)
		return r, false
	}
	next := r
	switch {
	case r.FailureMax > 0 && p.Failed-r.FailuresAcked >= r.FailureMax:
		next.Status = store.RolloutPaused
		next.PauseReason = fmt.Sprintf("%d devices failed, the failure threshold is %d", p.Failed-r.FailuresAcked, r.FailureMax)
	case p.Queued == 0 && p.InProgress == 0 && r.CurrentWave >= len(r.Waves)-1:
		next.Status, next.PauseReason = store.RolloutCompleted, ""
	default:
		cur := min(r.CurrentWave, len(p.Waves)-1)
		w := p.Waves[cur]
		// Failures the operator accepted by resuming do not count against
		// the wave: they were the earliest, so earlier waves' come first.
		earlier := 0
		for _, e := range p.Waves[:cur] {
			earlier += e.Failed
		}
		accepted := min(max(r.FailuresAcked-earlier, 0), w.Failed)
		need := ((w.Size-accepted)*r.SuccessPercent + 99) / 100
		switch {
		case w.Updated >= need && r.CurrentWave < len(r.Waves)-1:
			next.CurrentWave++
		case w.Queued == 0 && w.InProgress == 0 && w.Updated < need:
			next.Status = store.RolloutPaused
			next.PauseReason = fmt.Sprintf("wave %d finished with %d of %d updated, below the success threshold of %d%%",
				r.CurrentWave+1, w.Updated, w.Size, r.SuccessPercent)
		}
	}
	if next.Status == r.Status && next.CurrentWave == r.CurrentWave {
		return r, true
	}
	stored, ok, err := e.cfg.Store.UpdateOTARollout(ctx, next)
	if err != nil || !ok {
		// Another node moved it; the next sweep sees its result.
		return stored, false
	}
	e.log.Info("ota: rollout", "rollout", r.ID, "status", stored.Status, "wave", stored.CurrentWave+1, "reason", stored.PauseReason)
	AnnounceRollout(ctx, e.cfg.Bus, stored, p)
	return stored, stored.Status == store.RolloutRunning
}

// rolloutProgress counts r's members by outcome, what advance decides
// from. The store keeps the counts as members change, so this reads a few
// rows per wave, not every member: a tick costs the same for a rollout of
// ten devices or of the whole fleet.
func (e *Engine) rolloutProgress(ctx context.Context, r store.OTARollout) (store.OTAProgress, error) {
	return store.RolloutProgress(ctx, e.cfg.Store, r)
}
