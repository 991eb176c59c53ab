package api

import (
	"encoding/json"
	"sort"
	"strings"
	"testing"

	"github.com/thingline/thingline/bus/inproc"
)

// TestOpenAPIMatchesRoutes keeps openapi.json true to the route table: every
// route is documented with its method, every documented operation is
// served, and protected routes declare the 401 answer.
func TestOpenAPIMatchesRoutes(t *testing.T) {
	var doc struct {
		OpenAPI string                                `json:"openapi"`
		Paths   map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(openapiJSON, &doc); err != nil {
		t.Fatalf("openapi.json is not valid JSON: %v", err)
	}
	if !strings.HasPrefix(doc.OpenAPI, "3.") {
		t.Errorf("openapi version %q, want 3.x", doc.OpenAPI)
	}
	s := New(Config{Bus: inproc.New()})
	served := map[string]bool{}
	for _, rt := range s.routes {
		key := strings.ToLower(rt.Method) + " " + rt.Pattern
		served[key] = true
		op, ok := doc.Paths[rt.Pattern][strings.ToLower(rt.Method)]
		if !ok {
			t.Errorf("route %s %s is not in openapi.json", rt.Method, rt.Pattern)
			continue
		}
		var o struct {
			Responses map[string]json.RawMessage `json:"responses"`
			Security  *[]any                     `json:"security"`
			Access    string                     `json:"x-access"`
		}
		if err := json.Unmarshal(op, &o); err != nil {
			t.Errorf("%s: %v", key, err)
			continue
		}
		public := rt.Access == Public
		if public != (o.Security != nil && len(*o.Security) == 0) {
			t.Errorf("%s: public=%v but the document says otherwise", key, public)
		}
		if _, ok := o.Responses["401"]; !public && !ok {
			t.Errorf("%s: protected route documents no 401", key)
		}
		if o.Access != rt.Access.String() {
			t.Errorf("%s: x-access is %q, the route table says %q", key, o.Access, rt.Access)
		}
	}
	var documented []string
	for p, ops := range doc.Paths {
		for m := range ops {
			documented = append(documented, m+" "+p)
		}
	}
	sort.Strings(documented)
	for _, key := range documented {
		if !served[key] {
			t.Errorf("openapi.json documents %s, which is not served", key)
		}
	}
}
