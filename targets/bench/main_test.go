package bench

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"testing"

	"github.com/certkit/certkit/targets/faultproxy"
)

// proxyChildEnv makes the test binary a stand-alone fault proxy in front of
// the portal it names (host:port) instead of running tests: the benchmark
// puts tgtd behind the same proxy code our array runs in-process, but in a
// process of its own, so the proxy's CPU can be read and charged to tgtd.
const proxyChildEnv = "CERTKIT_BENCH_PROXY_UPSTREAM"

func TestMain(m *testing.M) {
	if up := os.Getenv(proxyChildEnv); up != "" {
		os.Exit(runProxyChild(up))
	}
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// runProxyChild serves a fault proxy to upstream, prints "proxy ADDR" and
// runs until SIGTERM, SIGINT or the end of stdin (the parent is gone).
func runProxyChild(upstream string) int {
	p, err := faultproxy.Listen("127.0.0.1:0", upstream)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer p.Close()
	fmt.Printf("proxy %s\n", p.Addr())
	done := make(chan os.Signal, 1)
	signal.Notify(done, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		bufio.NewReader(os.Stdin).ReadString(0)
		done <- syscall.SIGTERM
	}()
	<-done
	return 0
}

var (
	buildOnce sync.Once
	binDir    string
	certkit   string
	buildErr  error
)

// certkitBinaryEnv names a prebuilt certkit binary to measure instead of
// building cmd/certkit from this tree.
const certkitBinaryEnv = "CERTKIT_BIN"

// certkitBinary builds cmd/certkit once per test binary, with the race
// detector when the tests run with it, and returns its path; $CERTKIT_BIN
// overrides it.
func certkitBinary(tb testing.TB) string {
	tb.Helper()
	if bin := os.Getenv(certkitBinaryEnv); bin != "" {
		return bin
	}
	buildOnce.Do(func() {
		if binDir, buildErr = os.MkdirTemp("", "certkit-bench-"); buildErr != nil {
			return
		}
		certkit = filepath.Join(binDir, "certkit")
		args := []string{"build", "-o", certkit}
		if raceEnabled {
			args = append(args, "-race")
		}
		args = append(args, "github.com/certkit/certkit/cmd/certkit")
		out, err := exec.Command("go", args...).CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go %v: %v\n%s", args, err, out)
		}
	})
	if buildErr != nil {
		tb.Fatalf("building certkit: %v", buildErr)
	}
	return certkit
}
