// Command thingline is the whole life of an X.509-identified ESP32 device in
// one binary: factory line, cloud gateway and device twin.
package main // import "github.com/thingline/thingline/cmd/thingline"

import (
	"os"

	"github.com/thingline/thingline/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:]))
}
