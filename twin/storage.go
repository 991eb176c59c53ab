package twin

import (
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/thingline/thingline/pki"
	"github.com/thingline/thingline/spiffs"
)

// spiffsReader mounts a SPIFFS image read-only, as the firmware's
// esp_vfs_spiffs_register does, and reads files from its root.
func spiffsReader(img []byte) (ReadFunc, error) {
	fs, err := spiffs.Open(img, spiffs.DefaultConfig(len(img)))
	if err != nil {
		return nil, fmt.Errorf("twin: mounting SPIFFS image: %w", err)
	}
	return func(name string) ([]byte, error) { return fs.ReadFile("/" + name) }, nil
}

// rewriteSPIFFS returns img with the named files (bare names) replaced or
// added and every other file kept, laid out afresh in an image of the same
// size: what the firmware's writes leave, as far as any later boot can
// tell.
func rewriteSPIFFS(img []byte, files map[string][]byte) ([]byte, error) {
	cfg := spiffs.DefaultConfig(len(img))
	fs, err := spiffs.Open(img, cfg)
	if err != nil {
		return nil, fmt.Errorf("twin: mounting SPIFFS image: %w", err)
	}
	var out []spiffs.File
	done := map[string]bool{}
	for _, e := range fs.List() {
		data, err := fs.ReadFile(e.Path)
		if err != nil {
			return nil, fmt.Errorf("twin: reading %s: %w", e.Path, err)
		}
		if nd, ok := files[strings.TrimPrefix(e.Path, "/")]; ok {
			data = nd
			done[strings.TrimPrefix(e.Path, "/")] = true
		}
		out = append(out, spiffs.File{Path: e.Path, Data: data})
	}
	names := make([]string, 0, len(files))
	for name := range files {
		if !done[name] {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	for _, name := range names {
		out = append(out, spiffs.File{Path: "/" + name, Data: files[name]})
	}
	b, err := spiffs.Build(cfg, out)
	if err != nil {
		return nil, fmt.Errorf("twin: writing SPIFFS image: %w", err)
	}
	return b, nil
}

// identityWritable tells whether the twin can store a rotated identity:
// it boots from a SPIFFS image (a file or bytes), not from loose files.
func (t *Twin) identityWritable() bool {
	return t.cfg.Files == nil && (t.cfg.SPIFFS != "" || t.cfg.Image != nil)
}

// saveIdentity writes a rotated certificate and key into the SPIFFS image
// the twin boots from: the image file is replaced atomically (owner-only,
// it holds the private key), or the bytes in memory when the twin was
// given bytes.
func (t *Twin) saveIdentity(certPEM, keyPEM []byte) error {
	names := t.cfg.Names.withDefaults()
	files := map[string][]byte{names.Cert: certPEM, names.Key: keyPEM}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.cfg.Image != nil {
		img, err := rewriteSPIFFS(t.cfg.Image, files)
		if err != nil {
			return err
		}
		t.cfg.Image = img
		return nil
	}
	old, err := os.ReadFile(t.cfg.SPIFFS)
	if err != nil {
		return fmt.Errorf("twin: reading SPIFFS image: %w", err)
	}
	img, err := rewriteSPIFFS(old, files)
	if err != nil {
		return err
	}
	return pki.WriteFileAtomic(t.cfg.SPIFFS, img, 0o600)
}
