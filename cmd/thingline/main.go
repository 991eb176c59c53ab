// Command thingline is the whole life of an X.509-identified ESP32 device in
// one binary: factory line, cloud gateway and device twin.
package main // import "github.com/thingline/thingline/cmd/thingline"

import (
	"os"

	"github.com/thingline/thingline/cli"
	"github.com/thingline/thingline/node"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "serve" {
		// Before anything is opened: it may re-execute the process.
		node.TuneSysmon()
	}
	os.Exit(cli.Main(os.Args[1:]))
}
