//go:build race

package bench

// raceEnabled: the test binary, and so the certkit binary it builds, runs
// under the race detector.
const raceEnabled = true
