package console_test

import (
	"crypto/rand"

	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/thingline/thingline/twin"
)

// TestConsoleOTARollout uploads a firmware package in the console, starts
// a staged rollout to a profile's twins and watches it complete, the twins
// running the new version afterwards.
func TestConsoleOTARollout(t *testing.T) {
	ctx := browser(t)
	n := startNode(t)
	base := "http://" + n.HTTPAddr()
	units := startTwins(t, n, 3, time.Second)
	img := make([]byte, 24<<10)
	rand.Read(img)
	file := filepath.Join(t.TempDir(), "firmware-2.0.0.bin")
	if err := os.WriteFile(file, img, 0o600); err != nil {
		t.Fatal(err)
	}
	login(t, ctx, base)
	run(t, ctx, "the twins are online",
		chromedp.Navigate(base+"/console/devices"),
		waitJS(`[...document.querySelectorAll("#rows tr")].filter(r => r.textContent.includes("online")).length === 3`),
	)
	run(t, ctx, "upload a package",
		chromedp.Navigate(base+"/console/ota"),
		waitJS(`document.querySelector("#packages td.empty") !== null`),
		chromedp.SendKeys(chromedp.CSS(`#pk-title`), twin.FirmwareTitle),
		chromedp.SendKeys(chromedp.CSS(`#pk-version`), "2.0.0"),
		chromedp.SetUploadFiles(chromedp.CSS(`#pk-file`), []string{file}),
		chromedp.Click(chromedp.CSS(`#pkg-form button`)),
		waitJS(`document.querySelectorAll("#packages tr td").length > 1 && document.querySelector("#packages").textContent.includes("2.0.0")`),
		waitJS(`document.querySelector("#ro-pkg").options.length === 1`),
	)
	var rollout string
	run(t, ctx, "start a rollout in two waves",
		waitJS(`[...document.querySelector("#ro-profile").options].some(o => o.value === "default")`),
		chromedp.SetValue(chromedp.CSS(`#ro-profile`), "default"),
		chromedp.SendKeys(chromedp.CSS(`#ro-waves`), "1"),
		waitJS(`(document.querySelector("#ro-success").value = "100%", document.querySelector("#ro-failure").value = "1", true)`),
		chromedp.Click(chromedp.CSS(`#rollout-form button`)),
		waitJS(`document.querySelector("#rollouts article") !== null`),
		waitJS(`document.querySelector("#rollouts article h3").textContent.includes("completed")`),
		into(chromedp.Text(chromedp.CSS(`#rollouts article`)), &rollout),
	)
	if !strings.Contains(rollout, "3/3 updated") || !strings.Contains(rollout, "wave 2 of 2") {
		t.Errorf("rollout: %q", rollout)
	}
	// The details stay open across the page's refreshes.
	run(t, ctx, "the rollout's waves",
		chromedp.Click(chromedp.CSS(`#rollouts article summary`)),
		waitJS(`document.querySelectorAll("#rollouts article details table").length === 2`),
		waitJS(`(window.loadsBefore = +document.querySelector("#rollouts").dataset.loads, true)`),
		waitJS(`+document.querySelector("#rollouts").dataset.loads > window.loadsBefore`),
		waitJS(`document.querySelector("#rollouts article details").open`),
	)
	screenshot(t, ctx, "ota")
	var facts string
	run(t, ctx, "a device runs the new version",
		chromedp.Navigate(base+"/console/devices/"+units[0].SN),
		waitJS(`document.querySelector("#dev-ota").textContent.includes("updated")`),
		into(chromedp.Text(chromedp.CSS(`#dev-ota`)), &facts),
	)
	if !strings.Contains(facts, "2.0.0") {
		t.Errorf("device firmware facts: %q", facts)
	}
	run(t, ctx, "the fleet's firmware", chromedp.Navigate(base+"/console/"),
		waitJS(`document.querySelector("#fw-chart").textContent.includes("2.0.0")`))

}
