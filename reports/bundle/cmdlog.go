package bundle

import (
	"bytes"
	"fmt"
	"path"
	"strconv"
	"strings"
	"time"
)

// Command is one command run on a host, as recorded in the host's command log.
type Command struct {
	Start    time.Time
	Duration time.Duration
	Command  string // the command line, e.g. "esxcli storage core path list"
	ExitCode int
	Output   []byte // what the host returned (stdout, then stderr), verbatim
}

// cmdHeader starts every record of a command log.
const cmdHeader = "### "

// FormatCommand renders one record of a command log:
//
//	### 2026-01-02T15:04:05.123456789Z exit=0 duration=12ms bytes=1234 cmd="esxcli storage core path list"
//	<exactly 1234 bytes of output>
//	<newline>
//
// The byte count makes the log parseable whatever the output contains.
func FormatCommand(c Command) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s%s exit=%d duration=%s bytes=%d cmd=%s\n",
		cmdHeader, c.Start.UTC().Format(time.RFC3339Nano), c.ExitCode, c.Duration, len(c.Output), strconv.Quote(c.Command))
	b.Write(c.Output)
	b.WriteByte('\n')
	return b.Bytes()
}

// ParseCommandLog reads back a command log written by (*Writer).LogCommand.
func ParseCommandLog(data []byte) ([]Command, error) {
	var out []Command
	for off := 0; off < len(data); {
		nl := bytes.IndexByte(data[off:], '\n')
		if nl < 0 {
			return out, fmt.Errorf("command log: offset %d: header line not terminated", off)
		}
		c, n, err := parseCmdHeader(string(data[off : off+nl]))
		if err != nil {
			return out, fmt.Errorf("command log: offset %d: %w", off, err)
		}
		start := off + nl + 1
		if n >= len(data)-start || data[start+n] != '\n' {
			return out, fmt.Errorf("command log: offset %d: record %q: output of %d bytes is truncated", off, c.Command, n)
		}
		c.Output = bytes.Clone(data[start : start+n])
		out = append(out, c)
		off = start + n + 1
	}
	return out, nil
}

func parseCmdHeader(line string) (Command, int, error) {
	var c Command
	rest, ok := strings.CutPrefix(line, cmdHeader)
	if !ok {
		return c, 0, fmt.Errorf("want a %q header line, got %q", cmdHeader, shorten(line, 80))
	}
	fields, cmd, ok := strings.Cut(rest, " cmd=")
	if !ok {
		return c, 0, fmt.Errorf("header has no cmd=")
	}
	var err error
	if c.Command, err = strconv.Unquote(cmd); err != nil {
		return c, 0, fmt.Errorf("header cmd=%s: %w", shorten(cmd, 80), err)
	}
	f := strings.Fields(fields)
	if len(f) != 4 {
		return c, 0, fmt.Errorf("header %q: want time exit= duration= bytes=", shorten(fields, 80))
	}
	if c.Start, err = time.Parse(time.RFC3339Nano, f[0]); err != nil {
		return c, 0, fmt.Errorf("header time: %w", err)
	}
	var n int
	for _, kv := range f[1:] {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "exit":
			c.ExitCode, err = strconv.Atoi(v)
		case "duration":
			c.Duration, err = time.ParseDuration(v)
		case "bytes":
			n, err = strconv.Atoi(v)
			if err == nil && n < 0 {
				err = fmt.Errorf("negative")
			}
		default:
			err = fmt.Errorf("unknown field")
		}
		if err != nil {
			return c, 0, fmt.Errorf("header %s: %w", shorten(kv, 40), err)
		}
	}
	return c, n, nil
}

// esxcli options that take their value as the next word.
var esxcliValueFlags = map[string]bool{
	"--formatter": true, "--format-param": true, "--server": true, "-s": true,
	"--username": true, "-u": true, "--password": true, "-p": true, "--config": true, "-c": true,
	"--vihost": true, "-h": true, "--sessionfile": true, "--savesessionfile": true,
	"--protocol": true, "--portnumber": true, "--cacertsfile": true, "--thumbprint": true, "--credstore": true,
}

// CommandLogPath is the log a command goes to:
// "hosts/<host>/commands/esxcli_<ns>.txt", where ns is the first two
// namespace words ("esxcli storage core path list" -> esxcli_storage_core.txt,
// "esxcli --formatter=xml iscsi session list" -> esxcli_iscsi_session.txt).
// localcli is treated like esxcli; any other command logs to
// "<program>.txt" ("vmkfstools -P /vmfs/volumes/ds1" -> vmkfstools.txt).
func CommandLogPath(host, command string) (string, error) {
	dir, err := HostDir(host)
	if err != nil {
		return "", err
	}
	f := strings.Fields(command)
	if len(f) == 0 {
		return "", fmt.Errorf("host %s: empty command", quoteName(host))
	}
	prog, err := safeElem(path.Base(f[0]))
	if err != nil {
		return "", fmt.Errorf("host %s: command %s: %w", quoteName(host), quoteName(shorten(command, 80)), err)
	}
	name := prog
	if prog == "esxcli" || prog == "localcli" {
		var ns []string
		for i := 1; i < len(f) && len(ns) < 2; i++ {
			w := f[i]
			if strings.HasPrefix(w, "-") {
				if !strings.Contains(w, "=") && esxcliValueFlags[w] {
					i++
				}
				continue
			}
			if !isNamespaceWord(w) {
				break
			}
			ns = append(ns, w)
		}
		if len(ns) > 0 {
			name += "_" + strings.Join(ns, "_")
		}
	}
	return dir + "/commands/" + name + ".txt", nil
}

func isNamespaceWord(w string) bool {
	for _, r := range w {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9') {
			return false
		}
	}
	return w != ""
}

// RedactCommand replaces the values of secret options (--secret, --password,
// --mutual-secret, and -S of the esxcli chap commands) so that command logs
// can leave the lab.
func RedactCommand(command string) string {
	f := strings.Fields(command)
	chap := strings.Contains(command, "chap")
	changed := false
	for i := 0; i < len(f); i++ {
		w := f[i]
		if !strings.HasPrefix(w, "-") {
			continue
		}
		flag, _, hasValue := strings.Cut(w, "=")
		secret := (strings.HasPrefix(flag, "--") && secretKey(flag)) || (chap && flag == "-S")
		switch {
		case !secret:
		case hasValue:
			f[i] = flag + "=" + Redacted
			changed = true
		case i+1 < len(f):
			f[i+1] = Redacted
			changed = true
			i++
		}
	}
	if !changed {
		return command
	}
	return strings.Join(f, " ")
}
