package htmlreport

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"time"
)

// screenshotHeight is 1600 px unless CERTKIT_REPORT_SCREENSHOT_HEIGHT says
// otherwise (to look at a whole report).
func screenshotHeight() int {
	var h int
	if _, err := fmt.Sscan(os.Getenv("CERTKIT_REPORT_SCREENSHOT_HEIGHT"), &h); err != nil || h <= 0 {
		return 1600
	}
	return h
}

// findChromium returns the path of a Chromium binary, or "".
func findChromium() string {
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	return ""
}

// screenshot renders page (a file) in headless Chromium into png, with a
// throwaway profile and nothing reaching the network.
func screenshot(chromium, page, png string, height int, timeout time.Duration) error {
	profile, err := os.MkdirTemp("", "certkit-chromium-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(profile)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, chromium, "--headless", "--no-sandbox", "--disable-gpu",
		"--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
		"--disable-dev-shm-usage", "--hide-scrollbars",
		"--user-data-dir="+profile, "--screenshot="+png, fmt.Sprintf("--window-size=1280,%d", height), "file://"+page)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("chromium: %v\n%s", err, out.String())
	}
	if _, err := os.Stat(png); err != nil {
		return fmt.Errorf("chromium wrote no screenshot: %v\n%s", err, out.String())
	}
	return nil
}
