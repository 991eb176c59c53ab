package api

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
)

// Query parameters are declared once, in openapi.json: a route accepts the
// query parameters its operation documents and no others, each at most
// once (unless of type "array"), an "integer" one only as a decimal int64 and one with an "enum"
// only with a listed value. wrap applies this to every route, so a route
// added to the table and the document gets the checks without code of its
// own; its handler still checks ranges and meaning.

// queryParam is one documented query parameter.
type queryParam struct {
	Name   string `json:"name"`
	In     string `json:"in"`
	Ref    string `json:"$ref"`
	Schema struct {
		Type string   `json:"type"`
		Enum []string `json:"enum"`
	} `json:"schema"`
}

// documentedQueries reads openapi.json's query parameters per operation,
// keyed "METHOD PATTERN" as the mux is.
func documentedQueries(doc []byte) (map[string][]queryParam, error) {
	var d struct {
		Paths      map[string]map[string]struct{ Parameters []queryParam }
		Components struct{ Parameters map[string]queryParam }
	}
	if err := json.Unmarshal(doc, &d); err != nil {
		return nil, fmt.Errorf("api: openapi.json: %w", err)
	}
	out := map[string][]queryParam{}
	for path, ops := range d.Paths {
		for method, op := range ops {
			key := strings.ToUpper(method) + " " + path
			out[key] = []queryParam{}
			for _, p := range op.Parameters {
				if name, ok := strings.CutPrefix(p.Ref, "#/components/parameters/"); ok {
					p = d.Components.Parameters[name]
				}
				if p.In == "query" {
					out[key] = append(out[key], p)
				}
			}
		}
	}
	return out, nil
}

// checkQuery answers 400 for a query that does not fit the declaration.
func checkQuery(r *http.Request, declared []queryParam) error {
	if r.URL.RawQuery == "" {
		return nil
	}
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return errorf(http.StatusBadRequest, "malformed query string: %v", err)
	}
	for name, vs := range q {
		i := slices.IndexFunc(declared, func(p queryParam) bool { return p.Name == name })
		if i < 0 {
			var names []string
			for _, p := range declared {
				names = append(names, p.Name)
			}
			if len(names) == 0 {
				return errorf(http.StatusBadRequest, "unknown query parameter %q: this route takes none", name)
			}
			return errorf(http.StatusBadRequest, "unknown query parameter %q: this route takes %s", name, strings.Join(names, ", "))
		}
		if len(vs) > 1 && declared[i].Schema.Type != "array" {
			return errorf(http.StatusBadRequest, "query parameter %q given %d times", name, len(vs))
		}
		p := declared[i]
		if p.Schema.Type == "integer" {
			if _, err := strconv.ParseInt(vs[0], 10, 64); err != nil {
				return errorf(http.StatusBadRequest, "query parameter %q must be an integer, not %q", name, vs[0])
			}
		}
		if len(p.Schema.Enum) > 0 && !slices.Contains(p.Schema.Enum, vs[0]) {
			return errorf(http.StatusBadRequest, "query parameter %q must be one of %s, not %q", name, strings.Join(p.Schema.Enum, ", "), vs[0])
		}
	}
	return nil
}
