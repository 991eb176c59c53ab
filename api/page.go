package api

import "net/http"

// writePage answers one page of a listing ordered by descending id:
// {"<key>":[…],"next":<the last id>}, with "next" only when the page is
// full (the caller passes it back as "before").
func writePage[T any](w http.ResponseWriter, key string, items []T, limit int64, id func(T) int64) {
	resp := map[string]any{key: items}
	if items == nil {
		resp[key] = []T{}
	}
	if len(items) > 0 && len(items) == int(limit) {
		resp["next"] = id(items[len(items)-1])
	}
	writeJSON(w, http.StatusOK, resp)
}

// pageParams reads a listing's paging parameters: limit (default
// defaultLimit, at most 1,000), before (an id cursor) and since (ms).
func pageParams(r *http.Request) (limit, before, since int64, err error) {
	if limit, err = queryInt(r, "limit", defaultLimit, 1, 1000); err != nil {
		return
	}
	if before, err = queryInt(r, "before", 0, 0, 1<<63-1); err != nil {
		return
	}
	since, err = queryInt(r, "since", 0, 0, 1<<62)
	return
}
