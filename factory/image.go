package factory

import (
	"fmt"

	"github.com/thingline/thingline/spiffs"
)

// image builds the unit's SPIFFS image with spiffsgen.py's defaults (the
// ESP-IDF Kconfig defaults the firmware is built with), sized to the spiffs
// partition. Absent files (the key in CSR mode) are left out.
func (in *injector) image(files map[string][]byte) ([]byte, error) {
	var fs []spiffs.File
	for _, n := range in.imageOrder() {
		if b, ok := files[n]; ok {
			fs = append(fs, spiffs.File{Path: "/" + n, Data: b})
		}
	}
	img, err := spiffs.Build(spiffs.DefaultConfig(int(in.spiffs.Size)), fs)
	if err != nil {
		return nil, fmt.Errorf("factory: spiffs image for partition %s (%#x bytes): %w", in.spiffs.Name, in.spiffs.Size, err)
	}
	return img, nil
}
