package bench

import (
	"os"
	"strings"
	"testing"
	"time"
)

// feed parses captured stdout the way runPerf does, line by line.
func feed(out string, seconds int) *perfResult {
	r := &perfResult{Stdout: out}
	for _, l := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
		r.line(l, time.Time{}, seconds)
	}
	return r
}

func TestIscsiPerfOutputIsParsedIntoProgressAndTheFinalAverage(t *testing.T) {
	// Real output of Debian's iscsi-perf 1.19 (-l -r -t 3 -m 1 -b 8)
	// against certkit target serve.
	b, err := os.ReadFile("testdata/iscsi-perf-1.19-4KiB-QD1.out")
	if err != nil {
		t.Fatal(err)
	}
	r := feed(string(b), 3)
	if err := r.err(); err != nil {
		t.Fatalf("a clean run reads as failed: %v", err)
	}
	if r.TransferBytes != 4096 || r.AvgIOPS != 8202 || r.AvgMiBps != 32 {
		t.Fatalf("transfer %d B, average %d IOPS %d MiB/s; want 4096 B, 8202 IOPS, 32 MiB/s", r.TransferBytes, r.AvgIOPS, r.AvgMiBps)
	}
	want := []perfProgress{
		{Elapsed: 1, CurIOPS: 8010, AvgIOPS: 8010, AvgMiBps: 31, InFlight: 1},
		{Elapsed: 2, CurIOPS: 7791, AvgIOPS: 7900, AvgMiBps: 30, InFlight: 1},
	}
	if len(r.Progress) != len(want) {
		t.Fatalf("progress = %+v, want %+v", r.Progress, want)
	}
	for i := range want {
		if r.Progress[i] != want[i] {
			t.Fatalf("progress[%d] = %+v, want %+v", i, r.Progress[i], want[i])
		}
	}
}

func TestIscsiPerfElapsedTimeSurvivesItsRemainingTimeUnderflowing(t *testing.T) {
	// iscsi-perf ends at the first progress line whose remaining time is
	// exactly 0; when a stall skips that second the unsigned remaining time
	// wraps and it runs on. 2^64-1 s remaining of a 5 s run is 6 s elapsed.
	r := feed("5124095576030431:00:15 - lba 1, iops current 1 (0 MB/s), iops average 1 (0 MB/s), in_flight 1, busy 0        ", 5)
	if len(r.Progress) != 1 || r.Progress[0].Elapsed != 6 {
		t.Fatalf("progress = %+v, want one line at 6 s elapsed", r.Progress)
	}
}

func TestIscsiPerfRunsThatDidNotFinishCleanlyAreErrors(t *testing.T) {
	good, err := os.ReadFile("testdata/iscsi-perf-1.19-4KiB-QD1.out")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(good), "\n")
	var cut []string // stopped printing: no final average, no "finished."
	for _, l := range lines {
		if strings.HasPrefix(l, "\riops average") {
			break
		}
		cut = append(cut, l)
	}
	for name, r := range map[string]*perfResult{
		"stopped printing": func() *perfResult {
			r := feed(strings.Join(cut, "\n"), 3)
			r.Interrupted = "printed nothing for 10s: stalled, interrupted"
			return r
		}(),
		"service loop failed": func() *perfResult {
			r := feed(string(good), 3)
			r.Stderr = "iscsi_service failed with : read from socket failed\n"
			return r
		}(),
		"aborted": feed(string(good)+"ABORTED!\n", 3),
		"exit status": func() *perfResult {
			r := feed(string(good), 3)
			r.ExitCode = 1
			return r
		}(),
		"unknown line": feed(string(good)+"something new\n", 3),
	} {
		if r.err() == nil {
			t.Errorf("%s: reads as a clean run", name)
		}
	}
}

func TestCPUTimeIsUserPlusSystemTicksOfAllThreads(t *testing.T) {
	// /proc/PID/stat of a process whose name holds ") (": utime 250 and
	// stime 50 ticks are 3 s.
	line := "4242 (odd) (name) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 9 0 100 0 0"
	d, err := parseStat([]byte(line))
	if err != nil || d != 3*time.Second {
		t.Fatalf("parseStat = %v, %v; want 3s", d, err)
	}
	if _, err := parseStat([]byte("4242 (short) S 1")); err == nil {
		t.Fatal("a truncated stat line parsed")
	}
	// This process's own CPU time grows while it computes.
	deadline := time.Now().Add(5 * time.Second)
	x := 0
	for {
		self, err := cpuTime(os.Getpid())
		if err != nil {
			t.Fatal(err)
		}
		if self > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("this process's CPU time is still %v after 5 s of computing", self)
		}
		for i := range 1_000_000 {
			x += i
		}
	}
	_ = x
}
