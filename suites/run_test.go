package suites

import (
	"testing"
	"time"
)

func TestLogSinceKeepsTheRunWindow(t *testing.T) {
	log := "2026-11-23T16:00:00.000Z cpu0:1)old\n" +
		"2026-11-23T16:05:00.000Z cpu0:1)first of the run\n" +
		"continuation without a stamp\n" +
		"2026-11-23T16:06:00.000Z cpu1:2)later\n"
	got := logSince(log, time.Date(2026, 11, 23, 16, 4, 0, 0, time.UTC))
	want := "2026-11-23T16:05:00.000Z cpu0:1)first of the run\ncontinuation without a stamp\n2026-11-23T16:06:00.000Z cpu1:2)later\n"
	if got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
	vobd := "2026-11-23T16:00:00.000Z: [scsiCorrelator] old\n2026-11-23T16:05:00.000Z: [scsiCorrelator] new\n"
	if got := logSince(vobd, time.Date(2026, 11, 23, 16, 4, 0, 0, time.UTC)); got != "2026-11-23T16:05:00.000Z: [scsiCorrelator] new\n" {
		t.Fatalf("vobd window: %q", got)
	}
	if logSince(log, time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)) != "" {
		t.Fatal("nothing is newer than 2027")
	}
}
