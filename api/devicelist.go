package api

import (
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/thingline/thingline/store"
)

// listDevices pages through the fleet with filters and an order. The
// cursor in "next" (and "after") is the last device's name for the name
// order and "KEY:NAME" for the others; clients pass it back unchanged.
func (s *Server) listDevices(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	limit, err := queryInt(r, "limit", defaultLimit, 1, 1000)
	if err != nil {
		return err
	}
	opt := store.ListOptions{Limit: int(limit), Search: strings.TrimSpace(q.Get("q")),
		Profile: q.Get("profile"), Firmware: q.Get("firmware")}
	if p := principal(r); !p.Role.Staff() {
		opt.Owner = p.UserID // an owner lists their own devices only
	} else if name := q.Get("owner"); name != "" {
		u, err := s.cfg.Store.GetUserByName(r.Context(), name)
		switch {
		case errors.Is(err, store.ErrNotFound):
			opt.Owner = -1 // nobody's: an empty page, as for any filter
		case err != nil:
			return err
		default:
			opt.Owner = u.ID
		}
	}
	sort := q.Get("sort")
	sort, opt.Desc = strings.CutPrefix(sort, "-")
	opt.Sort = store.DeviceSort(sort)
	if !opt.Sort.Valid() {
		return errorf(http.StatusBadRequest, "sort must be name, lastSeen or created, with - for descending; not %q", q.Get("sort"))
	}
	switch v := q.Get("online"); v {
	case "":
	case "true", "false":
		b := v == "true"
		opt.Online = &b
	default:
		return errorf(http.StatusBadRequest, "online must be true or false, not %q", v)
	}
	if after := q.Get("after"); after != "" {
		if opt.Sort == "" || opt.Sort == store.SortName {
			opt.After = after
		} else {
			k, name, ok := strings.Cut(after, ":")
			key, err := strconv.ParseInt(k, 10, 64)
			if !ok || err != nil || name == "" {
				return errorf(http.StatusBadRequest, "after must be a cursor from a previous page's next")
			}
			opt.After, opt.AfterKey = name, key
		}
	}
	ds, err := s.cfg.Store.ListDevices(r.Context(), opt)
	if err != nil {
		return err
	}
	resp := struct {
		Devices []store.Device `json:"devices"`
		Next    string         `json:"next,omitempty"`
		Total   *int64         `json:"total,omitempty"`
	}{Devices: ds}
	if resp.Devices == nil {
		resp.Devices = []store.Device{}
	}
	for i := range resp.Devices {
		ownerView(principal(r), &resp.Devices[i])
	}
	if len(ds) == int(limit) {
		last := ds[len(ds)-1]
		resp.Next = last.Name
		if opt.Sort != "" && opt.Sort != store.SortName {
			resp.Next = strconv.FormatInt(opt.Sort.SortKey(last), 10) + ":" + last.Name
		}
	}
	if q.Get("count") == "true" {
		n, err := s.cfg.Store.CountDevices(r.Context(), opt)
		if err != nil {
			return err
		}
		resp.Total = &n
	}
	writeJSON(w, http.StatusOK, resp)
	return nil
}

// fleetSummary is the overview of the whole fleet.
func (s *Server) fleetSummary(w http.ResponseWriter, r *http.Request) error {
	sum, err := s.cfg.Store.FleetSummary(r.Context(), time.Now())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, sum)
	return nil
}
