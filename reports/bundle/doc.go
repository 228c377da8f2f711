// Package bundle writes, verifies and reads certkit submission bundles: one
// .tgz that a reviewer can check and replay without the lab.
//
// The format is documented in reports/BUNDLE.md. Layout (modeled on VMware
// certification logs and vm-support):
//
//	manifest.json                                  schema_version, tool_version, catalog_version, required, completeness, created_at, finished_at, lab, lab_profile, hosts, arrays, files[{path,sha256,size}]
//	manifest.sig                                   optional ed25519 signature of manifest.json
//	results/results.json                           {"tests":[TestResult...]}
//	results/junit.xml                              the same results for CI tools
//	lab/profile.yaml                               the lab profile, secrets redacted
//	hosts/<host>/commands/esxcli_<ns>.txt          append-only log of every command run on the host
//	hosts/<host>/var/log/vmkernel.log              vmkernel.log as followed during the run
//	tests/<id>/result.json                         one TestResult
//	tests/<id>/timeline.json, tests/<id>/evidence.json   fault timeline; observer samples, I/O and limits
//
// A Writer stages files in "<bundle>.partial/" as the run goes, so evidence
// survives a crash; Close packs the archive atomically. A run that died
// leaves the staging directory: Check calls it incomplete (not corrupt) and
// Finalize seals it. Check is the reviewer's verification: Verify
// (integrity, schema, signature, consistency) plus completeness against
// the required tests.
//
// The archive is deterministic: manifest.json comes first, then every other
// file in byte order of its path; every entry is a regular file with mode
// 0644, uid/gid 0, no owner names, and mtime = the manifest's finished_at
// (whole seconds); the gzip header carries no name and no time. The same
// staged files and the same Meta and clock give a byte-identical archive.
// Real mtimes are not kept: they would only record when the harness wrote a
// file, which the manifest and the evidence already say.
//
// Verify and Read never trust the archive: names are checked before use,
// only regular files (and directories, ignored) are accepted, and all reads
// are streamed under the limits below, so memory stays bounded whatever the
// input. No secret is written: see Meta.Secrets and RedactYAML.
package bundle
