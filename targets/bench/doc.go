// Package bench measures certkit's array against Debian's tgtd and proves
// that libiscsi's unmodified iscsi-perf runs against it. It holds only tests:
//
//   - BenchmarkTargets (`make bench`): reads with iscsi-perf and writes with
//     certkit's initiator, 4 KiB QD1 and 128 KiB QD16, direct and through a
//     fault proxy, ours and tgtd interleaved; IOPS, MiB/s and target CPU per
//     I/O. The table lives in targets/BENCH.md.
//   - TestIscsiPerfRunsSixtySeconds (`make test`): iscsi-perf with its
//     keepalives on runs CERTKIT_PERF_SECONDS (default 60) against
//     `certkit target serve` at both sizes and finishes.
//
// Both need libiscsi-bin (and the benchmark tgt) and skip without them.
package bench
