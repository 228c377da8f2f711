package frontend

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"net"

	"github.com/certkit/certkit/iscsi"
)

// The session's own framing. iscsi.ReadPDU and iscsi.WritePDU allocate and
// copy every data segment; on the I/O path the reader instead puts a
// Data-Out payload straight into its command's buffer, and the writer
// hands header and data to one writev without copying them.

// rxBufferSize is the session reader's buffer: headers and small segments
// come out of it, while a data segment larger than it is read straight into
// its destination.
const rxBufferSize = 16 << 10

// readHeader reads a BHS, its AHS and header digest into p, leaving p.Data
// nil. A digest mismatch returns iscsi.ErrHeaderDigest: the header cannot be
// trusted, so the caller drops the connection.
func (s *session) readHeader(p *iscsi.PDU) error {
	p.AHS, p.Data = nil, nil
	if _, err := io.ReadFull(s.br, p.BHS[:]); err != nil {
		return err
	}
	if n := int(p.BHS[4]) * 4; n > 0 {
		p.AHS = make([]byte, n)
		if err := readFull(s.br, p.AHS); err != nil {
			return err
		}
	}
	if s.par.digests.Header {
		var d [4]byte
		if err := readFull(s.br, d[:]); err != nil {
			return err
		}
		if binary.LittleEndian.Uint32(d[:]) != iscsi.CRC32C(p.BHS[:], p.AHS) {
			return iscsi.ErrHeaderDigest
		}
	}
	if n := p.DataSegmentLength(); n > s.par.ourRecv {
		return fmt.Errorf("%w: %s declares %d bytes, limit %d", iscsi.ErrTooLong, p.Opcode(), n, s.par.ourRecv)
	}
	return nil
}

// readData reads a data segment of n bytes, its padding and data digest.
// dst, when not nil, is exactly n bytes and receives the data; nil
// discards it. A digest mismatch returns iscsi.ErrDataDigest after the
// whole segment was consumed.
func (s *session) readData(dst []byte, n uint32) error {
	if n == 0 {
		return nil
	}
	var crc uint32
	if dst != nil {
		if err := readFull(s.br, dst); err != nil {
			return err
		}
		if s.par.digests.Data {
			crc = iscsi.CRC32C(dst)
		}
	} else {
		var scratch [4096]byte
		for left := n; left > 0; {
			k := min(left, uint32(len(scratch)))
			if err := readFull(s.br, scratch[:k]); err != nil {
				return err
			}
			if s.par.digests.Data {
				crc = crc32cUpdate(crc, scratch[:k])
			}
			left -= k
		}
	}
	var tail [7]byte
	padN := int(pad4(n) - n)
	tailN := padN
	if s.par.digests.Data {
		tailN += 4
	}
	if tailN == 0 {
		return nil
	}
	if err := readFull(s.br, tail[:tailN]); err != nil {
		return err
	}
	if s.par.digests.Data {
		crc = crc32cUpdate(crc, tail[:padN])
		if binary.LittleEndian.Uint32(tail[padN:tailN]) != crc {
			return iscsi.ErrDataDigest
		}
	}
	return nil
}

// readSegment reads a data segment into a fresh buffer (for the PDUs that
// are not on the I/O path: NOP-Out, Text, Logout, Task Management).
func (s *session) readSegment(p *iscsi.PDU) error {
	n := p.DataSegmentLength()
	if n == 0 {
		return nil
	}
	b := make([]byte, n)
	p.Data = b
	return s.readData(b, n)
}

func readFull(r io.Reader, b []byte) error {
	_, err := io.ReadFull(r, b)
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

func pad4(n uint32) uint32 { return (n + 3) &^ 3 }

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// crc32cUpdate continues a CRC32C (iscsi.CRC32C) over more bytes.
func crc32cUpdate(crc uint32, b []byte) uint32 { return crc32.Update(crc, castagnoli, b) }

// txPDU is one PDU queued for the writer. Its header is a value, its data
// a slice into a buffer the PDU does not own.
type txPDU struct {
	bhs        [iscsi.BHSLen]byte
	data       []byte
	stat       stat
	closeAfter bool   // drop the connection once written (logout, data digest error)
	finish     *task  // the task this PDU answers: it leaves the task table as the PDU goes out
	release    []byte // a pooled buffer to give back once written
}

func newTx(op iscsi.Opcode) txPDU {
	var o txPDU
	o.bhs[0] = byte(op) & 0x3f
	binary.BigEndian.PutUint32(o.bhs[16:20], iscsi.ReservedTag)
	return o
}

func (o *txPDU) setU32(off int, v uint32) { binary.BigEndian.PutUint32(o.bhs[off:off+4], v) }
func (o *txPDU) setLUN(v uint64)          { binary.BigEndian.PutUint64(o.bhs[8:16], v) }
func (o *txPDU) setITT(v uint32)          { o.setU32(16, v) }
func (o *txPDU) setTTT(v uint32)          { o.setU32(20, v) }
func (o *txPDU) opcode() iscsi.Opcode     { return iscsi.Opcode(o.bhs[0] & 0x3f) }

// pdu renders the PDU for Config.Trace.
func (o *txPDU) pdu() *iscsi.PDU {
	p := &iscsi.PDU{BHS: o.bhs, Data: o.data}
	n := len(o.data)
	p.BHS[5], p.BHS[6], p.BHS[7] = byte(n>>16), byte(n>>8), byte(n)
	return p
}

// txBatch gathers PDUs for one writev: headers in a fixed arena (so the
// slices taken from it stay valid), data segments by reference.
type txBatch struct {
	hdr  []byte // capacity maxBatch*(48+4)
	tail []byte // capacity maxBatch*(3+4): padding and data digests
	iov  net.Buffers
	keep net.Buffers // iov before WriteTo consumes it
}

const maxBatch = 64

var zeroPad [3]byte

func newTxBatch() *txBatch {
	return &txBatch{
		hdr:  make([]byte, 0, maxBatch*(iscsi.BHSLen+4)),
		tail: make([]byte, 0, maxBatch*7),
		iov:  make(net.Buffers, 0, maxBatch*3),
	}
}

func (b *txBatch) reset() {
	b.hdr, b.tail = b.hdr[:0], b.tail[:0]
	clear(b.keep)
	b.iov = b.keep[:0]
}

// add encodes o's header with the negotiated digests.
func (b *txBatch) add(o *txPDU, d iscsi.Digests) {
	n := len(o.data)
	o.bhs[4] = 0
	o.bhs[5], o.bhs[6], o.bhs[7] = byte(n>>16), byte(n>>8), byte(n)
	start := len(b.hdr)
	b.hdr = append(b.hdr, o.bhs[:]...)
	if d.Header {
		b.hdr = binary.LittleEndian.AppendUint32(b.hdr, iscsi.CRC32C(o.bhs[:]))
	}
	b.iov = append(b.iov, b.hdr[start:len(b.hdr):len(b.hdr)])
	if n == 0 {
		return
	}
	b.iov = append(b.iov, o.data)
	pad := int(pad4(uint32(n))) - n
	if pad == 0 && !d.Data {
		return
	}
	ts := len(b.tail)
	b.tail = append(b.tail, zeroPad[:pad]...)
	if d.Data {
		crc := iscsi.CRC32C(o.data)
		if pad > 0 {
			crc = crc32cUpdate(crc, zeroPad[:pad])
		}
		b.tail = binary.LittleEndian.AppendUint32(b.tail, crc)
	}
	b.iov = append(b.iov, b.tail[ts:len(b.tail):len(b.tail)])
}

// buffersWriter is a connection that takes a batch in one call, as a TCP
// connection does with writev; net.Buffers.WriteTo only finds that on the
// net package's own types, so an in-memory connection (a fault proxy in
// this process) offers it by this method.
type buffersWriter interface {
	WriteBuffers(*net.Buffers) (int64, error)
}

func (b *txBatch) writeTo(c net.Conn) error {
	b.keep = b.iov
	var err error
	if w, ok := c.(buffersWriter); ok {
		_, err = w.WriteBuffers(&b.iov)
	} else {
		_, err = b.iov.WriteTo(c)
	}
	return err
}
