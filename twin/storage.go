package twin

import (
	"fmt"

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
