package cli

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// apiClient is what operator commands use to call a node's REST API: the
// same routes a script or the console calls, so the CLI can do nothing the
// API does not allow.
type apiClient struct {
	server string
	token  string
	caFile string
}

// addFlags declares --server, --token and --ca-file on c. The defaults come
// from THINGLINE_SERVER and THINGLINE_TOKEN (or THINGLINE_ADMIN_TOKEN, what
// serve reads), so that a shell session sets them once.
func (a *apiClient) addFlags(c *cobra.Command) {
	server := os.Getenv("THINGLINE_SERVER")
	if server == "" {
		server = "http://127.0.0.1:8080"
	}
	f := c.Flags()
	f.StringVar(&a.server, "server", server, "the node's API base URL (or THINGLINE_SERVER)")
	f.StringVar(&a.token, "token", "", "API bearer token (default THINGLINE_TOKEN or THINGLINE_ADMIN_TOKEN)")
	f.StringVar(&a.caFile, "ca-file", "", "PEM bundle that verifies an https server")
}

// do sends one request; body, when not nil, is sent with contentType. A
// status other than 2xx is an error carrying the API's message. The answer
// is at most 16 MiB.
func (a *apiClient) do(ctx context.Context, method, path, contentType string, body []byte) ([]byte, error) {
	u, err := url.Parse(a.server)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("--server %q: want an http or https URL", a.server)
	}
	tok := a.token
	if tok == "" {
		tok = os.Getenv("THINGLINE_TOKEN")
	}
	if tok == "" {
		tok = os.Getenv("THINGLINE_ADMIN_TOKEN")
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if a.caFile != "" {
		b, err := os.ReadFile(a.caFile)
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("--ca-file %s holds no PEM certificate", a.caFile)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	hc := &http.Client{Transport: tr, Timeout: time.Minute}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(a.server, "/")+path, rd)
	if err != nil {
		return nil, err
	}
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	if body != nil {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, fmt.Errorf("%s %s: reading the answer: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(out, &e) == nil && e.Error != "" {
			return nil, fmt.Errorf("%s %s: %s (HTTP %d)", method, path, e.Error, resp.StatusCode)
		}
		return nil, fmt.Errorf("%s %s: HTTP %d", method, path, resp.StatusCode)
	}
	return out, nil
}

// getJSON calls GET path and decodes the answer into v.
func (a *apiClient) getJSON(ctx context.Context, path string, v any) error {
	b, err := a.do(ctx, "GET", path, "", nil)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("GET %s: undecodable answer: %w", path, err)
	}
	return nil
}
