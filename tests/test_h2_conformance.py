"""HTTP/2 conformance (RFC 9113, RFC 7541) of the real `corsac` process, h2spec style.

h2spec itself cannot be installed here, so this file replays its `http2` and `hpack`
sections (and a few more server-side rules of RFC 9113) with a small frame-level
client: raw sockets, `hyperframe` to build well-formed frames and parse what the server
sends, hand-made bytes for malformed frames, and `hpack` to decode the server's header
blocks.  Request header blocks are written by hand (literal fields without indexing,
no Huffman) so every byte on the wire is known and the client keeps no encoder state.

Everything runs over h2c with prior knowledge on a plaintext port.  The app is
tests/apps/h2spec_app.py.  Protocol handling is C (libnghttp2 underneath), so the file
runs on the default event loop; the ASGI app serves every case, and a handful of cases
run against the WSGI app too (the `both` fixture) to show both request paths.

How errors are checked:

* connection error: a GOAWAY carrying the error code RFC 9113 requires, then the server
  closes the connection (`expect_goaway`);
* stream error: a RST_STREAM on that stream with the required code, and the connection
  still answers a PING afterwards (`expect_rst`);
* where the section itself lets the receiver choose (DATA over the frame size limit,
  DATA over the flow-control window, a CONTINUATION outside a header block), either is
  accepted but the code is still checked (`expect_stream_error`).

Where libnghttp2 itself answers differently from the section (it widens several stream
errors to connection errors, which Section 5.4.1 permits; it ignores a lower stream id;
it resets the stream instead of the connection on an overflowing
SETTINGS_INITIAL_WINDOW_SIZE), the case keeps the RFC's assertion and is marked
`xfail(strict=True)` with the reason (see "known differences").

Test names are `test_<RFC 9113 section>_<what>`; HPACK cases are `test_hpack_<RFC 7541
section>_<what>`.  Each case has its own connection and a few seconds at most."""
import socket
import struct
import sys
import time
from pathlib import Path

import hpack
import pytest
from hyperframe.frame import (ContinuationFrame, DataFrame, Frame, GoAwayFrame,
                              HeadersFrame, PingFrame, PriorityFrame, PushPromiseFrame,
                              RstStreamFrame, SettingsFrame, WindowUpdateFrame)

sys.path.insert(0, str(Path(__file__).parent))
from conftest import Server  # noqa: E402

pytestmark = pytest.mark.timeout(20)

WAIT = 2.0          # longest wait for one expected frame / the close
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# frame types
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, \
    CONTINUATION = range(10)
TYPE_NAMES = {0: "DATA", 1: "HEADERS", 2: "PRIORITY", 3: "RST_STREAM", 4: "SETTINGS",
              5: "PUSH_PROMISE", 6: "PING", 7: "GOAWAY", 8: "WINDOW_UPDATE", 9: "CONTINUATION"}
# flags
END_STREAM = ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20
# error codes
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR, SETTINGS_TIMEOUT, STREAM_CLOSED, \
    FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR, CONNECT_ERROR, \
    ENHANCE_YOUR_CALM, INADEQUATE_SECURITY, HTTP_1_1_REQUIRED = range(14)
CODE_NAMES = {0: "NO_ERROR", 1: "PROTOCOL_ERROR", 2: "INTERNAL_ERROR", 3: "FLOW_CONTROL_ERROR",
              4: "SETTINGS_TIMEOUT", 5: "STREAM_CLOSED", 6: "FRAME_SIZE_ERROR",
              7: "REFUSED_STREAM", 8: "CANCEL", 9: "COMPRESSION_ERROR", 10: "CONNECT_ERROR",
              11: "ENHANCE_YOUR_CALM", 12: "INADEQUATE_SECURITY", 13: "HTTP_1_1_REQUIRED"}
# settings
HEADER_TABLE_SIZE, ENABLE_PUSH, MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE, \
    MAX_HEADER_LIST_SIZE = range(1, 7)
NO_RFC7540_PRIORITIES = 9
MAX_WINDOW = 2 ** 31 - 1


def cname(code):
    return CODE_NAMES.get(code, hex(code))


# --------------------------------------------------------------------------- HPACK, by hand

def hint(value, prefix, first=0):
    """RFC 7541 5.1 integer with an N-bit prefix; `first` holds the bits above the prefix."""
    top = (1 << prefix) - 1
    if value < top:
        return bytes([first | value])
    out = [first | top]
    value -= top
    while value >= 128:
        out.append((value & 127) | 128)
        value >>= 7
    out.append(value)
    return bytes(out)


def hstr(s):
    b = s if isinstance(s, bytes) else s.encode("latin-1")
    return hint(len(b), 7) + b


def lit(name, value):
    """Literal field without indexing, new name (RFC 7541 6.2.2)."""
    return b"\x00" + hstr(name) + hstr(value)


def lit_indexed(name, value):
    """Literal field with incremental indexing, new name (RFC 7541 6.2.1)."""
    return b"\x40" + hstr(name) + hstr(value)


def block(fields):
    return b"".join(lit(n, v) for n, v in fields)


# --------------------------------------------------------------------------- raw frames

def frame(ftype, flags, sid, payload=b"", length=None):
    """A frame with any header: `length` overrides the length field, `sid` may carry the
    reserved bit."""
    n = len(payload) if length is None else length
    return struct.pack(">I", n)[1:] + bytes([ftype, flags]) + struct.pack(">I", sid) + payload


def describe_raw(data):
    """One line per frame of raw bytes we send (for the transcript)."""
    out, i = [], 0
    while i + 9 <= len(data):
        n = int.from_bytes(data[i:i + 3], "big")
        t, fl = data[i + 3], data[i + 4]
        sid = int.from_bytes(data[i + 5:i + 9], "big")
        body = data[i + 9:i + 9 + n]
        out.append(f"{TYPE_NAMES.get(t, hex(t))}(len={n}, flags={fl:#04x}, stream={sid:#x}) "
                   f"{bytes(body[:24]).hex()}{'...' if len(body) > 24 else ''}")
        i += 9 + n
    if i < len(data):
        out.append(f"bytes {data[i:i + 40]!r}")
    return "; ".join(out)


# --------------------------------------------------------------------------- the client

class H2:
    """One HTTP/2 client connection.  Every frame sent and received is kept in `log`,
    which failure messages print."""

    def __init__(self, server):
        self.server = server
        self.authority = f"{server.host}:{server.port}"
        self.sock = server.connect(WAIT)
        self.buf = bytearray()
        self.log = []
        self.received = []
        self.closed = False
        self.decoder = hpack.Decoder()
        self.server_settings = {}
        self._block = {}            # stream -> [first HEADERS frame, fragments]
        self._ping_n = 0

    def close(self):
        self.sock.close()

    # ---- sending

    def send_bytes(self, data, note=None):
        self.log.append("> " + (note or describe_raw(data)))
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError) as e:
            self.log.append(f"  (send failed: {e!r})")

    def send(self, *frames):
        """Send hyperframe frames (well-formed ones) and/or raw bytes, in one write."""
        data, notes = b"", []
        for f in frames:
            if isinstance(f, (bytes, bytearray)):
                data += f
                notes.append(describe_raw(f))
            else:
                data += f.serialize()
                notes.append(repr(f)[:200])
        self.send_bytes(data, "; ".join(notes))

    def request_fields(self, method="GET", path="/", extra=()):
        return [(":method", method), (":scheme", "http"), (":path", path),
                (":authority", self.authority)] + list(extra)

    def headers(self, sid, fields=None, end_stream=True, end_headers=True, blk=None, **kw):
        flags = (["END_STREAM"] if end_stream else []) + (["END_HEADERS"] if end_headers else [])
        flags += kw.pop("flags", [])
        if blk is None:
            blk = block(fields if fields is not None else self.request_fields())
        return HeadersFrame(sid, data=blk, flags=flags, **kw)

    def get(self, sid, path="/", extra=()):
        self.send(self.headers(sid, self.request_fields("GET", path, extra)))

    def post(self, sid, path="/", extra=()):
        """Opens a POST request whose body is still to come (stream open)."""
        self.send(self.headers(sid, self.request_fields("POST", path, extra), end_stream=False))

    # ---- receiving

    def _fill(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        self.sock.settimeout(left)
        try:
            b = self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError from None
        except ConnectionResetError:
            b = b""
        if not b:
            self.closed = True
            self.log.append("< (connection closed)")
            return False
        self.buf += b
        return True

    def next_frame(self, timeout=WAIT):
        """The next frame, None once the server closed; raises TimeoutError."""
        if self.closed:
            return None
        deadline = time.monotonic() + timeout
        while len(self.buf) < 9:
            if not self._fill(deadline):
                return None
        f, length = Frame.parse_frame_header(memoryview(bytes(self.buf[:9])))
        while len(self.buf) < 9 + length:
            if not self._fill(deadline):
                return None
        body = bytes(self.buf[9:9 + length])
        del self.buf[:9 + length]
        f.parse_body(memoryview(body))
        f.length = length
        self._note(f)
        self.received.append(f)
        return f

    def _note(self, f):
        f.fields = None
        t = f.type
        if t == SETTINGS and "ACK" not in f.flags:
            self.server_settings.update(f.settings)
        if t in (HEADERS, PUSH_PROMISE):
            self._block[f.stream_id] = [f, f.data]
        elif t == CONTINUATION and f.stream_id in self._block:
            self._block[f.stream_id][1] += f.data
        if t in (HEADERS, PUSH_PROMISE, CONTINUATION) and "END_HEADERS" in f.flags \
                and f.stream_id in self._block:
            first, blk = self._block.pop(f.stream_id)
            first.fields = self.decoder.decode(blk)
            f.fields = first.fields
            self.log.append(f"< {repr(first)[:120]} fields={first.fields}")
        elif t == GOAWAY:
            self.log.append(f"< GOAWAY(last_stream_id={f.last_stream_id}, "
                            f"error={cname(f.error_code)}, debug={f.additional_data[:200]!r})")
        elif t == RST_STREAM:
            self.log.append(f"< RST_STREAM(stream={f.stream_id}, error={cname(f.error_code)})")
        else:
            self.log.append("< " + repr(f)[:160])

    def transcript(self):
        return "\n".join(self.log[-80:])

    def fail(self, msg):
        pytest.fail(f"{msg}\n--- transcript ---\n{self.transcript()}", pytrace=False)

    def wait_for(self, pred, what, timeout=WAIT, bad=None):
        """Read frames until pred(frame); fail on close, timeout, or bad(frame)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                f = self.next_frame(max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                self.fail(f"timed out after {timeout}s waiting for {what}")
            if f is None:
                self.fail(f"connection closed while waiting for {what}")
            if pred(f):
                return f
            if bad is not None and bad(f):
                self.fail(f"got {f!r} while waiting for {what}")

    # ---- the connection preface

    def handshake(self, settings=None, wait_ack=True):
        """Client preface + SETTINGS; read the server's SETTINGS; ACK it; wait for the
        ACK of ours."""
        s = SettingsFrame(0, settings=settings or {})
        self.send_bytes(PREFACE + s.serialize(), f"preface + {s!r}")
        self.wait_for(lambda f: f.type == SETTINGS and "ACK" not in f.flags,
                      "the server's SETTINGS", timeout=3 * WAIT)
        self.send(SettingsFrame(0, flags=["ACK"]))
        if wait_ack:
            self.wait_settings_ack()
        return self

    def wait_settings_ack(self):
        return self.wait_for(lambda f: f.type == SETTINGS and "ACK" in f.flags,
                             "SETTINGS ACK", bad=lambda f: f.type == GOAWAY)

    def settings(self, values):
        """Send SETTINGS and wait for its ACK."""
        self.send(SettingsFrame(0, settings=values))
        self.wait_settings_ack()

    @property
    def max_frame_size(self):
        return self.server_settings.get(MAX_FRAME_SIZE, 16384)

    # ---- expectations

    def expect_close(self, timeout=WAIT / 2):
        deadline = time.monotonic() + timeout
        while True:
            try:
                f = self.next_frame(max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                self.fail(f"the server did not close the connection within {timeout}s")
            if f is None:
                return

    def expect_goaway(self, *codes, last_stream_id=None):
        """Connection error: GOAWAY with one of `codes`, then the connection closes."""
        want = " or ".join(cname(c) for c in codes)
        g = self.wait_for(lambda f: f.type == GOAWAY, f"GOAWAY({want})")
        if g.error_code not in codes:
            self.fail(f"GOAWAY carries {cname(g.error_code)}, expected {want}")
        if last_stream_id is not None and g.last_stream_id != last_stream_id:
            self.fail(f"GOAWAY last_stream_id is {g.last_stream_id}, expected {last_stream_id}")
        self.expect_close()
        return g

    def expect_rst(self, sid, *codes, alive=True):
        """Stream error: RST_STREAM(sid) with one of `codes`, and the connection lives on."""
        want = " or ".join(cname(c) for c in codes)
        r = self.wait_for(lambda f: f.type == RST_STREAM and f.stream_id == sid,
                          f"RST_STREAM(stream {sid}, {want})",
                          bad=lambda f: f.type == GOAWAY)
        if r.error_code not in codes:
            self.fail(f"RST_STREAM carries {cname(r.error_code)}, expected {want}")
        if alive:
            self.ping_ok()
        return r

    def expect_stream_error(self, sid, *codes):
        """Stream error the receiver may also treat as a connection error (RFC 9113
        5.4.1): RST_STREAM(sid) or GOAWAY, either with one of `codes`."""
        want = " or ".join(cname(c) for c in codes)
        f = self.wait_for(lambda f: f.type == GOAWAY or (f.type == RST_STREAM
                                                         and f.stream_id == sid),
                          f"RST_STREAM(stream {sid}) or GOAWAY with {want}")
        if f.error_code not in codes:
            self.fail(f"{TYPE_NAMES[f.type]} carries {cname(f.error_code)}, expected {want}")
        if f.type == GOAWAY:
            print(f"stream error escalated to a connection error: GOAWAY({cname(f.error_code)})")
            self.expect_close()
        return f

    def expect_conn_error_or_close(self, code, http1_status=()):
        """Invalid preface (RFC 9113 3.4): a connection error whose GOAWAY MAY be
        omitted.  So: the server closes; what it sent is HTTP/2 frames (its SETTINGS,
        WINDOW_UPDATE, and a GOAWAY carrying `code`) or nothing, or, when `http1_status`
        names them, an HTTP/1.1 response with one of those statuses (the server took the
        bytes for an HTTP/1.1 request).  Returns the raw bytes."""
        raw = bytes(self.buf)
        deadline = time.monotonic() + WAIT
        while True:
            try:
                if not self._fill(deadline):
                    break
            except TimeoutError:
                self.fail("the server did not close the connection")
            raw = bytes(self.buf)
        self.log.append(f"< {raw[:200]!r}")
        if raw.startswith(b"HTTP/1."):
            status = int(raw[9:12])
            if status not in http1_status:
                self.fail(f"answered with HTTP/1.1 {status} instead of HTTP/2")
            return raw
        i = 0
        while i + 9 <= len(raw):
            f, n = Frame.parse_frame_header(memoryview(raw[i:i + 9]))
            f.parse_body(memoryview(raw[i + 9:i + 9 + n]))
            self.log.append("< " + repr(f)[:160])
            if f.type == GOAWAY and f.error_code != code:
                self.fail(f"GOAWAY carries {cname(f.error_code)}, expected {cname(code)}")
            if f.type not in (SETTINGS, WINDOW_UPDATE, GOAWAY):
                self.fail(f"unexpected {f!r} after an invalid preface")
            i += 9 + n
        if i != len(raw):
            self.fail(f"trailing bytes that are not a frame: {raw[i:i + 40]!r}")
        return raw

    def ping_ok(self, timeout=WAIT):
        """PING with a fresh payload is answered by a PING ACK with the same payload."""
        self._ping_n += 1
        payload = b"corsac%02d" % (self._ping_n % 100)
        self.send(PingFrame(0, opaque_data=payload))
        return self.wait_for(lambda f: f.type == PING and "ACK" in f.flags
                             and f.opaque_data == payload,
                             f"PING ACK {payload!r}", timeout,
                             bad=lambda f: f.type == GOAWAY)

    def response(self, sid, window_updates=False):
        """The response on `sid`, read to its end: (status, {name: value}, body).  Frames
        of that stream that were already read (by an earlier wait_for) count too."""
        fields, body = None, b""
        seen = [f for f in self.received if f.stream_id == sid]
        while True:
            if seen:
                f = seen.pop(0)
            else:
                f = self.wait_for(lambda f: f.stream_id == sid or f.type == GOAWAY,
                                  f"the response on stream {sid}")
            if f.type == GOAWAY or f.type == RST_STREAM:
                self.fail(f"got {TYPE_NAMES[f.type]}({cname(f.error_code)}) instead of the "
                          f"response on stream {sid}")
            if f.type == CONTINUATION:
                continue                    # its fields are on the HEADERS frame
            if f.type == HEADERS:
                if f.fields is None:        # CONTINUATION follows
                    self.wait_for(lambda g: g.type == CONTINUATION and g.fields is not None,
                                  "the end of the response header block")
                d = dict(f.fields)
                if fields is None and d.get(":status", "").startswith("1"):
                    continue
                if fields is None:
                    fields = d
            elif f.type == DATA:
                body += f.data
                if window_updates and f.flow_controlled_length:
                    self.send(WindowUpdateFrame(0, window_increment=f.flow_controlled_length),
                              WindowUpdateFrame(sid, window_increment=f.flow_controlled_length))
            if "END_STREAM" in f.flags:
                if fields is None:
                    self.fail(f"stream {sid} ended without a response header block")
                return int(fields[":status"]), fields, body

    def data_frames(self, sid):
        return [f for f in self.received if f.type == DATA and f.stream_id == sid]


# --------------------------------------------------------------------------- known differences

def escalated(what, code, section):
    """Reason for a case where libnghttp2 itself (no option changes it) answers a stream
    error of RFC 9113 with a connection error: the same code, but in a GOAWAY."""
    return (f"libnghttp2 1.52 treats {what} as a connection error (GOAWAY {code}); RFC 9113 "
            f"{section} asks for a stream error (RST_STREAM {code}); 5.4.1 lets an endpoint "
            f"escalate, so the code is right but the scope is wider")


IGNORES_LOWER_ID = (
    "libnghttp2 1.52 silently ignores HEADERS whose stream id is lower than the last one "
    "opened when it holds no state for that id (nghttp2_session_on_request_headers_received, "
    "NGHTTP2_ERR_IGN_HEADER_BLOCK); RFC 9113 5.1.1 requires a connection error PROTOCOL_ERROR")


# --------------------------------------------------------------------------- servers

@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    d = tmp_path_factory.mktemp("h2spec")
    made, dead = {}, []
    kinds = {"asgi": ("h2spec_app:app", ("--interface", "asgi")),
             "asgi-h2only": ("h2spec_app:app", ("--interface", "asgi", "--http", "2")),
             "wsgi": ("h2spec_app:wsgi", ("--interface", "wsgi"))}

    def get(kind):
        s = made.get(kind)
        if s is not None and s.proc.poll() is not None:
            dead.append(s)
            s = None
        if s is None:
            app, args = kinds[kind]
            s = Server(app, args, tmp_path=d)
            made[kind] = s
        return s
    yield get
    for s in made.values():
        if s.proc.poll() is not None:
            dead.append(s)
        s.stop(timeout=5)
    assert not dead, "corsac died during the tests:\n" + "\n".join(
        f"{x.app} {x.args} rc={x.proc.returncode}\n{x.log()[-3000:]}" for x in dead)


@pytest.fixture
def server(pool):
    return pool("asgi")


@pytest.fixture(params=["asgi", "wsgi"])
def both(pool, request):
    return pool(request.param)


@pytest.fixture
def conns():
    made = []

    def make(server):
        c = H2(server)
        made.append(c)
        return c
    yield make
    for c in made:
        c.close()


@pytest.fixture
def c(server, conns):
    """A connection to the ASGI server, preface exchanged."""
    return conns(server).handshake()


@pytest.fixture
def cb(both, conns):
    """A connection to the ASGI or the WSGI server, preface exchanged."""
    return conns(both).handshake()


def half_closed_remote(conn, sid=1):
    """Stream `sid` half-closed (remote) on the server: the request is complete (END_STREAM)
    but the response cannot end, since the stream window is 0.  Waits for the response
    HEADERS, so the server has certainly seen the request."""
    conn.get(sid)
    conn.wait_for(lambda f: f.type == HEADERS and f.stream_id == sid,
                  f"the response HEADERS on stream {sid}",
                  bad=lambda f: f.type in (GOAWAY, RST_STREAM))


def closed_stream(conn, sid=1):
    """Stream `sid` closed after END_STREAM both ways (a full GET exchange)."""
    conn.get(sid)
    status, _, _ = conn.response(sid)
    assert status == 200


# =========================================================================== 3.4/3.5 preface

def test_3_5_valid_preface(server, conns):
    """The server's preface is a SETTINGS frame (its first frame), and it ACKs ours."""
    c = conns(server)
    c.send_bytes(PREFACE + SettingsFrame(0, settings={}).serialize(), "preface + SETTINGS")
    first = c.next_frame()
    if first is None or first.type != SETTINGS or "ACK" in first.flags:
        c.fail("the server's first frame is not a SETTINGS frame without ACK")
    c.send(SettingsFrame(0, flags=["ACK"]))
    c.wait_settings_ack()
    c.ping_ok()


def test_3_5_invalid_preface(pool, conns):
    """A preface that is not the HTTP/2 one (on an h2-only port): connection error
    PROTOCOL_ERROR, the GOAWAY may be omitted (RFC 9113 3.4)."""
    c = conns(pool("asgi-h2only"))
    c.send_bytes(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n" + SettingsFrame(0).serialize(),
                 "corrupted preface + SETTINGS")
    # --http 2 answers what reads as an HTTP/1.x request line with 505 (the contract)
    c.expect_conn_error_or_close(PROTOCOL_ERROR, http1_status=(505,))


def test_3_5_preface_not_followed_by_settings(c_raw):
    """The preface must be followed by SETTINGS: a PING first is an invalid preface."""
    c_raw.send_bytes(PREFACE + PingFrame(0, opaque_data=b"12345678").serialize(),
                     "preface + PING (no SETTINGS)")
    c_raw.expect_conn_error_or_close(PROTOCOL_ERROR)


@pytest.fixture
def c_raw(server, conns):
    """A connection to the ASGI server, nothing sent yet."""
    return conns(server)


# =========================================================================== 4.1 frame format

def test_4_1_unknown_frame_type_ignored(c):
    c.send(frame(0xff, 0, 0, b"\x00" * 8))
    c.ping_ok()


def test_4_1_undefined_flags_ignored(c):
    """A PING with undefined flags (not ACK) is answered like any PING."""
    c.send(frame(PING, 0x16, 0, b"flags!!!"))
    c.wait_for(lambda f: f.type == PING and "ACK" in f.flags and f.opaque_data == b"flags!!!",
               "PING ACK", bad=lambda f: f.type == GOAWAY)


def test_4_1_reserved_bit_ignored(c):
    """The reserved bit of the stream identifier is ignored."""
    c.send(frame(PING, 0, 0x80000000, b"reserved"))
    c.wait_for(lambda f: f.type == PING and "ACK" in f.flags and f.opaque_data == b"reserved",
               "PING ACK", bad=lambda f: f.type == GOAWAY)


def test_4_1_undefined_flags_on_headers_ignored(c):
    c.send(frame(HEADERS, END_STREAM | END_HEADERS | 0x02 | 0x10 | 0x40 | 0x80, 1,
                 block(c.request_fields())))
    assert c.response(1)[0] == 200


# =========================================================================== 4.2 frame size

def test_4_2_frame_size_data_max_accepted(cb):
    """A DATA frame of exactly SETTINGS_MAX_FRAME_SIZE (2^14 by default) is fine."""
    cb.post(1)
    cb.send(DataFrame(1, data=b"a" * cb.max_frame_size, flags=["END_STREAM"]))
    status, h, _ = cb.response(1)
    assert (status, h["x-body-len"]) == (200, str(cb.max_frame_size))


def test_4_2_frame_size_data_exceeds_max(c):
    """DATA one byte over SETTINGS_MAX_FRAME_SIZE: FRAME_SIZE_ERROR (a DATA frame does not
    alter connection state, so a stream error is enough; a connection error is allowed)."""
    c.post(1)
    c.send(frame(DATA, END_STREAM, 1, b"a" * (c.max_frame_size + 1)))
    c.expect_stream_error(1, FRAME_SIZE_ERROR)


def test_4_2_frame_size_headers_exceeds_max(c):
    """A frame carrying a field block that is too large: connection error FRAME_SIZE_ERROR."""
    blk = block(c.request_fields(extra=[("x-big", "a" * (c.max_frame_size + 10))]))
    c.send(frame(HEADERS, END_STREAM | END_HEADERS, 1, blk[:c.max_frame_size + 1]))
    c.expect_goaway(FRAME_SIZE_ERROR)


def test_4_2_server_respects_max_frame_size(c):
    """The server never sends a frame larger than our SETTINGS_MAX_FRAME_SIZE (16384)."""
    c.get(1, "/?n=40000")
    status, _, body = c.response(1, window_updates=True)
    assert (status, len(body)) == (200, 40000)
    big = [f for f in c.received if f.length > 16384]
    assert not big, big


def test_4_2_larger_max_frame_size_accepted(c):
    c.settings({MAX_FRAME_SIZE: 2 ** 24 - 1})
    c.get(1, "/?n=40000")
    status, _, body = c.response(1, window_updates=True)
    assert (status, body) == (200, b"x" * 40000)


# =========================================================================== 4.3 field blocks

def test_4_3_invalid_header_block_fragment(c):
    """Literal field with incremental indexing and no name/value: COMPRESSION_ERROR."""
    c.send(frame(HEADERS, END_STREAM | END_HEADERS, 1, b"\x40"))
    c.expect_goaway(COMPRESSION_ERROR)


def test_4_3_priority_inside_header_block(c):
    c.send(c.headers(1, end_headers=False),
           PriorityFrame(1, depends_on=0, stream_weight=255),
           ContinuationFrame(1, data=lit("x-dummy", "1"), flags=["END_HEADERS"]))
    c.expect_goaway(PROTOCOL_ERROR)


def test_4_3_headers_other_stream_inside_header_block(c):
    c.send(c.headers(1, end_headers=False), c.headers(3),
           ContinuationFrame(1, data=lit("x-dummy", "1"), flags=["END_HEADERS"]))
    c.expect_goaway(PROTOCOL_ERROR)


def test_4_3_data_inside_header_block(c):
    c.send(c.headers(1, c.request_fields("POST"), end_stream=False, end_headers=False),
           DataFrame(1, data=b"test"))
    c.expect_goaway(PROTOCOL_ERROR)


# =========================================================================== 5.1 stream states

def test_5_1_idle_stream_data(c):
    c.send(DataFrame(1, data=b"test", flags=["END_STREAM"]))
    c.expect_goaway(PROTOCOL_ERROR)


def test_5_1_idle_stream_rst_stream(c):
    c.send(RstStreamFrame(1, error_code=CANCEL))
    c.expect_goaway(PROTOCOL_ERROR)


def test_5_1_idle_stream_window_update(c):
    c.send(WindowUpdateFrame(1, window_increment=100))
    c.expect_goaway(PROTOCOL_ERROR)


def test_5_1_idle_stream_continuation(c):
    c.send(ContinuationFrame(1, data=block(c.request_fields()), flags=["END_HEADERS"]))
    c.expect_goaway(PROTOCOL_ERROR)


def test_5_1_idle_stream_priority_allowed(c):
    """PRIORITY may be sent on an idle stream; the stream stays idle and can be opened."""
    c.send(PriorityFrame(3, depends_on=0, stream_weight=16))
    c.ping_ok()
    c.get(3)
    assert c.response(3)[0] == 200


@pytest.fixture
def chc(server, conns):
    """Connection whose stream 1 is half-closed (remote) on the server (window 0)."""
    conn = conns(server).handshake({INITIAL_WINDOW_SIZE: 0})
    half_closed_remote(conn)
    return conn


@pytest.mark.xfail(strict=True, reason=escalated("DATA on a half-closed (remote) stream", "STREAM_CLOSED", "5.1"))
def test_5_1_half_closed_remote_data(chc):
    chc.send(DataFrame(1, data=b"test", flags=["END_STREAM"]))
    chc.expect_rst(1, STREAM_CLOSED)


@pytest.mark.xfail(strict=True, reason=escalated("HEADERS on a half-closed (remote) stream", "STREAM_CLOSED", "5.1"))
def test_5_1_half_closed_remote_headers(both, conns):
    c = conns(both).handshake({INITIAL_WINDOW_SIZE: 0})
    half_closed_remote(c)
    c.get(1)
    c.expect_rst(1, STREAM_CLOSED)


def test_5_1_half_closed_remote_continuation(chc):
    """CONTINUATION without an open header block: STREAM_CLOSED, or PROTOCOL_ERROR for the
    lone CONTINUATION (6.10)."""
    chc.send(ContinuationFrame(1, data=block(chc.request_fields()), flags=["END_HEADERS"]))
    chc.expect_stream_error(1, STREAM_CLOSED, PROTOCOL_ERROR)


def test_5_1_half_closed_remote_window_update_allowed(chc):
    """WINDOW_UPDATE is allowed in half-closed (remote): it lets the response finish."""
    chc.send(WindowUpdateFrame(1, window_increment=100))
    status, _, body = chc.response(1)
    assert (status, body) == (200, b"x" * 32)


def test_5_1_half_closed_remote_priority_allowed(chc):
    chc.send(PriorityFrame(1, depends_on=0, stream_weight=200))
    chc.ping_ok()
    chc.send(WindowUpdateFrame(1, window_increment=100))
    assert chc.response(1)[0] == 200


def test_5_1_half_closed_remote_rst_stream_allowed(chc):
    """RST_STREAM closes the stream: no DATA on it afterwards, even once the window opens."""
    chc.send(RstStreamFrame(1, error_code=CANCEL))
    chc.ping_ok()
    chc.settings({INITIAL_WINDOW_SIZE: 65535})
    chc.ping_ok()
    time.sleep(0.1)
    chc.ping_ok()
    assert not chc.data_frames(1)


def after_client_rst(conn, sid=1):
    conn.post(sid)
    conn.send(RstStreamFrame(sid, error_code=CANCEL))


@pytest.mark.xfail(strict=True, reason=escalated("DATA after the client's RST_STREAM", "STREAM_CLOSED", "5.1"))
def test_5_1_closed_after_rst_stream_data(c):
    after_client_rst(c)
    c.send(DataFrame(1, data=b"test", flags=["END_STREAM"]))
    c.expect_rst(1, STREAM_CLOSED)


@pytest.mark.xfail(strict=True, reason=escalated("HEADERS after the client's RST_STREAM", "STREAM_CLOSED", "5.1"))
def test_5_1_closed_after_rst_stream_headers(c):
    after_client_rst(c)
    c.get(1)
    c.expect_rst(1, STREAM_CLOSED)


def test_5_1_closed_after_rst_stream_continuation(c):
    after_client_rst(c)
    c.send(ContinuationFrame(1, data=lit("x-dummy", "1"), flags=["END_HEADERS"]))
    c.expect_stream_error(1, STREAM_CLOSED, PROTOCOL_ERROR)


def test_5_1_closed_after_rst_stream_priority_allowed(c):
    after_client_rst(c)
    c.send(PriorityFrame(1, depends_on=0, stream_weight=16))
    c.ping_ok()


def test_5_1_closed_data(c):
    """Frames after END_STREAM was received: connection error STREAM_CLOSED."""
    closed_stream(c)
    c.send(DataFrame(1, data=b"test", flags=["END_STREAM"]))
    c.expect_goaway(STREAM_CLOSED)


def test_5_1_closed_headers(c):
    closed_stream(c)
    c.get(1)
    c.expect_goaway(STREAM_CLOSED)


def test_5_1_closed_continuation(c):
    closed_stream(c)
    c.send(ContinuationFrame(1, data=lit("x-dummy", "1"), flags=["END_HEADERS"]))
    c.expect_goaway(STREAM_CLOSED, PROTOCOL_ERROR)


def test_5_1_closed_priority_allowed(c):
    closed_stream(c)
    c.send(PriorityFrame(1, depends_on=0, stream_weight=16))
    c.ping_ok()


def test_5_1_closed_window_update_and_rst_stream_ignored(c):
    """WINDOW_UPDATE or RST_STREAM received just after END_STREAM was sent MUST be ignored."""
    closed_stream(c)
    c.send(WindowUpdateFrame(1, window_increment=100), RstStreamFrame(1, error_code=CANCEL))
    c.ping_ok()
    c.get(3)
    assert c.response(3)[0] == 200


# =========================================================================== 5.1.1 stream ids

def test_5_1_1_even_stream_id(c):
    c.get(2)
    c.expect_goaway(PROTOCOL_ERROR)


@pytest.mark.xfail(strict=True, reason=IGNORES_LOWER_ID)
def test_5_1_1_decreasing_stream_id(c):
    c.get(5)
    assert c.response(5)[0] == 200
    c.get(3)
    c.expect_goaway(PROTOCOL_ERROR)


@pytest.mark.xfail(strict=True, reason=IGNORES_LOWER_ID)
def test_5_1_1_decreasing_stream_id_while_open(c):
    """Same, with the higher stream still open (its body still to come)."""
    c.post(5)
    c.ping_ok()
    c.get(3)
    c.expect_goaway(PROTOCOL_ERROR)


# =========================================================================== 5.1.2 concurrency

@pytest.mark.xfail(strict=True, reason=escalated("a stream over the acknowledged SETTINGS_MAX_CONCURRENT_STREAMS", "PROTOCOL_ERROR", "5.1.2"))
def test_5_1_2_exceeds_max_concurrent_streams(c):
    """One stream over the advertised SETTINGS_MAX_CONCURRENT_STREAMS: stream error
    PROTOCOL_ERROR or REFUSED_STREAM."""
    limit = c.server_settings.get(MAX_CONCURRENT_STREAMS)
    assert limit == 128, c.server_settings
    frames = [c.headers(2 * i + 1, c.request_fields("POST"), end_stream=False)
              for i in range(limit)]
    c.send(*frames)
    c.ping_ok()
    over = 2 * limit + 1
    c.get(over)
    c.expect_rst(over, REFUSED_STREAM, PROTOCOL_ERROR)


def test_5_1_2_exceeds_max_concurrent_streams_before_settings_ack(c_raw):
    """The same before we ACK the server's SETTINGS: the stream is refused
    (RST_STREAM REFUSED_STREAM), so it may be retried."""
    c = c_raw
    c.send_bytes(PREFACE + SettingsFrame(0).serialize(), "preface + SETTINGS (no ACK later)")
    c.wait_for(lambda f: f.type == SETTINGS and "ACK" not in f.flags, "the server's SETTINGS")
    limit = c.server_settings.get(MAX_CONCURRENT_STREAMS)
    assert limit == 128, c.server_settings
    c.send(*[c.headers(2 * i + 1, c.request_fields("POST"), end_stream=False)
             for i in range(limit + 1)])
    c.expect_rst(2 * limit + 1, REFUSED_STREAM)


# =========================================================================== 5.3 priority

@pytest.mark.xfail(strict=True, reason=escalated("HEADERS depending on its own stream", "PROTOCOL_ERROR", "5.3.1"))
def test_5_3_1_headers_depends_on_itself(c):
    c.send(c.headers(1, flags=["PRIORITY"], depends_on=1, stream_weight=16))
    c.expect_rst(1, PROTOCOL_ERROR)


@pytest.mark.xfail(strict=True, reason=escalated("PRIORITY depending on its own stream", "PROTOCOL_ERROR", "5.3.1"))
def test_5_3_1_priority_depends_on_itself(c):
    c.send(PriorityFrame(1, depends_on=1, stream_weight=16))
    c.expect_rst(1, PROTOCOL_ERROR)


# =========================================================================== 5.4 errors

def test_5_4_1_connection_error_goaway_then_close(c):
    """An invalid PING (stream 3): GOAWAY, then the TCP connection is closed."""
    c.send(frame(PING, 0, 3, b"\x00" * 8))
    c.expect_goaway(PROTOCOL_ERROR)


def test_5_4_1_goaway_last_stream_id(c):
    """The GOAWAY names the last stream the server processed."""
    closed_stream(c, 1)
    closed_stream(c, 3)
    c.send(frame(PING, 0, 3, b"\x00" * 8))
    c.expect_goaway(PROTOCOL_ERROR, last_stream_id=3)


# =========================================================================== 5.5 extensions

def test_5_5_unknown_extension_frame_ignored(c):
    c.send(frame(0x16, 0, 0, b"extension"), frame(0xfa, 0xff, 1, b"on a stream"))
    c.ping_ok()
    c.get(1)
    assert c.response(1)[0] == 200


def test_5_5_unknown_extension_frame_inside_header_block(c):
    c.send(c.headers(1, end_headers=False),
           frame(0x16, 0, 1, b"extension"),
           ContinuationFrame(1, data=lit("x-dummy", "1"), flags=["END_HEADERS"]))
    c.expect_goaway(PROTOCOL_ERROR)


# =========================================================================== 6.1 DATA

def test_6_1_data_stream_0(c):
    c.send(frame(DATA, END_STREAM, 0, b"test"))
    c.expect_goaway(PROTOCOL_ERROR)


def test_6_1_data_invalid_pad_length(c):
    """Pad Length larger than the payload: connection error PROTOCOL_ERROR."""
    c.post(1)
    c.send(frame(DATA, END_STREAM | PADDED, 1, b"\x06Test"))
    c.expect_goaway(PROTOCOL_ERROR)


def test_6_1_data_pad_length_equals_payload(c):
    """Padding as long as the frame payload (the Pad Length octet included) is an error."""
    c.post(1)
    c.send(frame(DATA, END_STREAM | PADDED, 1, b"\x05\x00\x00\x00\x00"))
    c.expect_goaway(PROTOCOL_ERROR)


def test_6_1_data_padding_accepted(c):
    """Padding is stripped: the app gets the data only; all-padding frames are fine."""
    c.post(1)
    c.send(DataFrame(1, data=b"hello", flags=["PADDED"], pad_length=10),
           frame(DATA, PADDED, 1, b"\x04\x00\x00\x00\x00"),
           DataFrame(1, data=b"!", flags=["PADDED", "END_STREAM"], pad_length=255))
    status, h, _ = c.response(1)
    assert (status, h["x-body-len"]) == (200, "6")


def test_6_1_data_empty_frames_accepted(c):
    c.post(1)
    c.send(DataFrame(1, data=b""), DataFrame(1, data=b"ab"), DataFrame(1, flags=["END_STREAM"]))
    status, h, _ = c.response(1)
    assert (status, h["x-body-len"]) == (200, "2")


# =========================================================================== 6.2 HEADERS

def test_6_2_headers_stream_0(c):
    c.send(frame(HEADERS, END_STREAM | END_HEADERS, 0, block(c.request_fields())))
    c.expect_goaway(PROTOCOL_ERROR)


def test_6_2_headers_invalid_pad_length(c):
    blk = block(c.request_fields())
    c.send(frame(HEADERS, END_STREAM | END_HEADERS | PADDED, 1,
                 bytes([len(blk) + 1]) + blk))
    c.expect_goaway(PROTOCOL_ERROR)


def test_6_2_headers_padded_with_priority_accepted(c):
    c.send(c.headers(1, flags=["PADDED", "PRIORITY"], pad_length=20, depends_on=0,
                     stream_weight=100, exclusive=True))
    assert c.response(1)[0] == 200


# =========================================================================== 6.3 PRIORITY

def test_6_3_priority_stream_0(c):
    c.send(frame(PRIORITY, 0, 0, b"\x00\x00\x00\x01\x10"))
    c.expect_goaway(PROTOCOL_ERROR)


@pytest.mark.xfail(strict=True, reason=escalated("a PRIORITY frame of 4 octets", "FRAME_SIZE_ERROR", "6.3"))
def test_6_3_priority_wrong_length(c):
    """A PRIORITY frame of 4 octets: stream error FRAME_SIZE_ERROR."""
    c.post(1)
    c.send(frame(PRIORITY, 0, 1, b"\x00\x00\x00\x00"))
    c.expect_rst(1, FRAME_SIZE_ERROR)


def test_6_3_priority_on_open_stream_accepted(c):
    c.post(1)
    c.send(PriorityFrame(1, depends_on=0, stream_weight=1, exclusive=True),
           DataFrame(1, data=b"abc", flags=["END_STREAM"]))
    status, h, _ = c.response(1)
    assert (status, h["x-body-len"]) == (200, "3")


# =========================================================================== 6.4 RST_STREAM

def test_6_4_rst_stream_stream_0(c):
    c.send(frame(RST_STREAM, 0, 0, struct.pack(">I", CANCEL)))
    c.expect_goaway(PROTOCOL_ERROR)


def test_6_4_rst_stream_idle_stream_above_open_one(c):
    c.post(1)
    c.send(RstStreamFrame(3, error_code=CANCEL))
    c.expect_goaway(PROTOCOL_ERROR)


def test_6_4_rst_stream_wrong_length(c):
    c.post(1)
    c.send(frame(RST_STREAM, 0, 1, b"\x00\x00\x08"))
    c.expect_goaway(FRAME_SIZE_ERROR)


def test_6_4_rst_stream_cancels_request(c):
    """After RST_STREAM the stream is gone (no answer on it); the connection goes on."""
    c.post(1)
    c.send(RstStreamFrame(1, error_code=CANCEL))
    c.get(3)
    assert c.response(3)[0] == 200
    c.ping_ok()
    assert not [f for f in c.received if f.stream_id == 1 and f.type in (HEADERS, DATA)]


# =========================================================================== 6.5 SETTINGS

def test_6_5_settings_ack_with_payload(c):
    c.send(frame(SETTINGS, ACK, 0, struct.pack(">HI", ENABLE_PUSH, 0)))
    c.expect_goaway(FRAME_SIZE_ERROR)


def test_6_5_settings_nonzero_stream(c):
    c.send(frame(SETTINGS, 0, 1, struct.pack(">HI", ENABLE_PUSH, 0)))
    c.expect_goaway(PROTOCOL_ERROR)


def test_6_5_settings_length_not_multiple_of_6(c):
    c.send(frame(SETTINGS, 0, 0, b"\x00\x02\x00"))
    c.expect_goaway(FRAME_SIZE_ERROR)


def test_6_5_2_enable_push_invalid_value(c):
    c.send(frame(SETTINGS, 0, 0, struct.pack(">HI", ENABLE_PUSH, 2)))
    c.expect_goaway(PROTOCOL_ERROR)


def test_6_5_2_initial_window_size_too_large(c):
    c.send(frame(SETTINGS, 0, 0, struct.pack(">HI", INITIAL_WINDOW_SIZE, 2 ** 31)))
    c.expect_goaway(FLOW_CONTROL_ERROR)


def test_6_5_2_max_frame_size_below_initial(c):
    c.send(frame(SETTINGS, 0, 0, struct.pack(">HI", MAX_FRAME_SIZE, 16383)))
    c.expect_goaway(PROTOCOL_ERROR)


def test_6_5_2_max_frame_size_above_max(c):
    c.send(frame(SETTINGS, 0, 0, struct.pack(">HI", MAX_FRAME_SIZE, 2 ** 24)))
    c.expect_goaway(PROTOCOL_ERROR)


def test_6_5_2_no_rfc7540_priorities_invalid_value(c):
    """SETTINGS_NO_RFC7540_PRIORITIES other than 0 or 1 (RFC 9113 5.3.2)."""
    c.send(frame(SETTINGS, 0, 0, struct.pack(">HI", NO_RFC7540_PRIORITIES, 2)))
    c.expect_goaway(PROTOCOL_ERROR)


def test_6_5_2_unknown_setting_ignored(c):
    c.send(frame(SETTINGS, 0, 0, struct.pack(">HI", 0xff, 1) + struct.pack(">HI", 0x7777, 9)))
    c.wait_settings_ack()
    c.get(1)
    assert c.response(1)[0] == 200


def test_6_5_2_boundary_values_accepted(c):
    """The edges of each range are valid values."""
    c.settings({ENABLE_PUSH: 0, MAX_FRAME_SIZE: 16384, INITIAL_WINDOW_SIZE: MAX_WINDOW,
                MAX_CONCURRENT_STREAMS: 0})
    c.settings({ENABLE_PUSH: 1, MAX_FRAME_SIZE: 2 ** 24 - 1, INITIAL_WINDOW_SIZE: 0,
                MAX_HEADER_LIST_SIZE: 2 ** 32 - 1})
    c.ping_ok()


def test_6_5_2_header_table_size_zero(c):
    """After we set SETTINGS_HEADER_TABLE_SIZE 0 the server must not use its dynamic
    table: the decoder is held to 0 octets and the responses still decode."""
    c.settings({HEADER_TABLE_SIZE: 0})
    c.decoder.header_table_size = 0
    c.decoder.max_allowed_table_size = 0
    for sid in (1, 3, 5):
        c.get(sid)
        status, h, _ = c.response(sid)
        assert (status, h["content-length"], h["x-body-len"]) == (200, "32", "0")


def test_6_5_3_multiple_initial_window_size_values(c):
    """Values are processed in order: the last SETTINGS_INITIAL_WINDOW_SIZE (1) wins."""
    c.send(frame(SETTINGS, 0, 0, struct.pack(">HI", INITIAL_WINDOW_SIZE, 100)
                 + struct.pack(">HI", INITIAL_WINDOW_SIZE, 1)))
    c.wait_settings_ack()
    c.get(1)
    d = c.wait_for(lambda f: f.type == DATA and f.stream_id == 1, "DATA on stream 1",
                   bad=lambda f: f.type in (GOAWAY, RST_STREAM))
    assert d.length == 1, d


def test_6_5_3_settings_acked(c):
    c.send(SettingsFrame(0, settings={ENABLE_PUSH: 0}))
    c.wait_settings_ack()
    c.send(SettingsFrame(0))
    c.wait_settings_ack()


# =========================================================================== 6.7 PING

def test_6_7_ping_answered_with_same_payload(c):
    c.send(PingFrame(0, opaque_data=b"\x00\xffh2spec"))
    c.wait_for(lambda f: f.type == PING and "ACK" in f.flags
               and f.opaque_data == b"\x00\xffh2spec", "PING ACK", bad=lambda f: f.type == GOAWAY)


def test_6_7_ping_ack_not_answered(c):
    c.send(PingFrame(0, opaque_data=b"ackack!!", flags=["ACK"]))
    c.ping_ok()
    assert not [f for f in c.received if f.type == PING and f.opaque_data == b"ackack!!"]


def test_6_7_ping_nonzero_stream(c):
    c.send(frame(PING, 0, 1, b"\x00" * 8))
    c.expect_goaway(PROTOCOL_ERROR)


def test_6_7_ping_wrong_length(c):
    c.send(frame(PING, 0, 0, b"\x00" * 6))
    c.expect_goaway(FRAME_SIZE_ERROR)


# =========================================================================== 6.8 GOAWAY

def test_6_8_goaway_nonzero_stream(c):
    c.send(frame(GOAWAY, 0, 1, struct.pack(">II", 0, NO_ERROR)))
    c.expect_goaway(PROTOCOL_ERROR)


def test_6_8_goaway_too_short(c):
    c.send(frame(GOAWAY, 0, 0, struct.pack(">I", 0)))
    c.expect_goaway(FRAME_SIZE_ERROR)


def test_6_8_client_goaway_open_stream_answered(c):
    """A client's GOAWAY limits server-initiated streams only: the request already sent
    is answered, then the connection ends."""
    c.get(1)
    c.send(GoAwayFrame(0, last_stream_id=0, error_code=NO_ERROR))
    status, _, body = c.response(1)
    assert (status, body) == (200, b"x" * 32)
    c.expect_close()


# =========================================================================== 6.9 WINDOW_UPDATE

def test_6_9_window_update_zero_increment(c):
    c.send(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 0)))
    c.expect_goaway(PROTOCOL_ERROR)


@pytest.mark.xfail(strict=True, reason=escalated("WINDOW_UPDATE 0 on an open stream", "PROTOCOL_ERROR", "6.9"))
def test_6_9_window_update_zero_increment_stream(c):
    c.post(1)
    c.send(frame(WINDOW_UPDATE, 0, 1, struct.pack(">I", 0)))
    c.expect_rst(1, PROTOCOL_ERROR)


def test_6_9_window_update_wrong_length(c):
    c.send(frame(WINDOW_UPDATE, 0, 0, b"\x00\x00\x01"))
    c.expect_goaway(FRAME_SIZE_ERROR)


def test_6_9_1_initial_window_size_1(both, conns):
    """With SETTINGS_INITIAL_WINDOW_SIZE 1 the server sends one octet, then waits; a
    WINDOW_UPDATE lets the rest through."""
    c = conns(both).handshake()
    c.settings({INITIAL_WINDOW_SIZE: 1})
    c.get(1)
    d = c.wait_for(lambda f: f.type == DATA and f.stream_id == 1, "DATA on stream 1",
                   bad=lambda f: f.type in (GOAWAY, RST_STREAM))
    assert d.length == 1, d
    time.sleep(0.1)
    c.ping_ok()
    assert sum(len(f.data) for f in c.data_frames(1)) == 1
    c.send(WindowUpdateFrame(1, window_increment=31))
    status, _, body = c.response(1)
    assert status == 200 and b"".join(f.data for f in c.data_frames(1)) == b"x" * 32


def test_6_9_1_window_overflow_connection(c):
    c.send(WindowUpdateFrame(0, window_increment=MAX_WINDOW),
           WindowUpdateFrame(0, window_increment=MAX_WINDOW))
    c.expect_goaway(FLOW_CONTROL_ERROR)


def test_6_9_1_window_overflow_stream(both, conns):
    c = conns(both).handshake()
    c.post(1)
    c.send(WindowUpdateFrame(1, window_increment=MAX_WINDOW),
           WindowUpdateFrame(1, window_increment=MAX_WINDOW))
    c.expect_rst(1, FLOW_CONTROL_ERROR)


def test_6_9_1_connection_window_respected(c):
    """Our connection window stays 65535 whatever the stream windows: the server stops
    there until a connection WINDOW_UPDATE."""
    c.settings({INITIAL_WINDOW_SIZE: 1 << 20})
    c.get(1, "/?n=70000")
    deadline = time.monotonic() + WAIT
    while sum(len(f.data) for f in c.data_frames(1)) < 65535:
        c.wait_for(lambda f: f.type == DATA and f.stream_id == 1, "DATA on stream 1",
                   timeout=max(0.01, deadline - time.monotonic()),
                   bad=lambda f: f.type in (GOAWAY, RST_STREAM))
    time.sleep(0.1)
    c.ping_ok()
    assert sum(len(f.data) for f in c.data_frames(1)) == 65535
    c.send(WindowUpdateFrame(0, window_increment=10000))
    status, _, _ = c.response(1)
    assert sum(len(f.data) for f in c.data_frames(1)) == 70000


def test_6_9_1_data_exceeds_stream_window(c):
    """More DATA than the window the server advertised: FLOW_CONTROL_ERROR.  /hold does not
    read the body, so the server has no reason to give any window back."""
    window = c.server_settings.get(INITIAL_WINDOW_SIZE, 65535)
    c.post(1, "/hold")
    chunk = c.max_frame_size
    left = window + 1
    frames = []
    while left > 0:
        n = min(chunk, left)
        frames.append(frame(DATA, 0, 1, b"a" * n))
        left -= n
    c.send_bytes(b"".join(frames), f"{len(frames)} DATA frames on stream 1, {window + 1} octets "
                 f"(the advertised window is {window})")
    c.expect_stream_error(1, FLOW_CONTROL_ERROR)


def test_6_9_2_initial_window_change_after_headers(c):
    c.settings({INITIAL_WINDOW_SIZE: 0})
    c.get(1)
    c.settings({INITIAL_WINDOW_SIZE: 1})
    d = c.wait_for(lambda f: f.type == DATA and f.stream_id == 1, "DATA on stream 1",
                   bad=lambda f: f.type in (GOAWAY, RST_STREAM))
    assert d.length == 1, d


def test_6_9_2_negative_window(c):
    """Window 3, 3 octets sent, window set to 2 (now -1), +2: exactly one more octet."""
    c.settings({INITIAL_WINDOW_SIZE: 3})
    c.get(1)
    d = c.wait_for(lambda f: f.type == DATA and f.stream_id == 1, "DATA on stream 1",
                   bad=lambda f: f.type in (GOAWAY, RST_STREAM))
    while sum(len(f.data) for f in c.data_frames(1)) < 3:
        c.wait_for(lambda f: f.type == DATA and f.stream_id == 1, "DATA on stream 1")
    c.settings({INITIAL_WINDOW_SIZE: 2})
    c.send(WindowUpdateFrame(1, window_increment=2))
    d = c.wait_for(lambda f: f.type == DATA and f.stream_id == 1, "DATA on stream 1",
                   bad=lambda f: f.type in (GOAWAY, RST_STREAM))
    assert d.length == 1, d
    time.sleep(0.1)
    c.ping_ok()
    assert sum(len(f.data) for f in c.data_frames(1)) == 4


@pytest.mark.xfail(strict=True, reason="libnghttp2 1.52 answers a SETTINGS_INITIAL_WINDOW_SIZE change that overflows an open stream's send window with RST_STREAM(FLOW_CONTROL_ERROR) on that stream (nghttp2_session_update_remote_initial_window_size); RFC 9113 6.9.2 requires a connection error")
def test_6_9_2_initial_window_change_overflows_stream_window(c):
    """A SETTINGS_INITIAL_WINDOW_SIZE change that pushes an open stream's window past
    2^31-1: connection error FLOW_CONTROL_ERROR."""
    c.post(1)
    c.send(WindowUpdateFrame(1, window_increment=MAX_WINDOW - 65535))
    c.ping_ok()
    c.send(SettingsFrame(0, settings={INITIAL_WINDOW_SIZE: 65536}))
    c.expect_goaway(FLOW_CONTROL_ERROR)


# =========================================================================== 6.10 CONTINUATION

def test_6_10_multiple_continuation_accepted(cb):
    blk = block(cb.request_fields(extra=[("x-test", "continued")]))
    parts = [blk[i:i + 10] for i in range(0, len(blk), 10)]
    frames = [HeadersFrame(1, data=parts[0], flags=["END_STREAM"])]
    frames += [ContinuationFrame(1, data=p) for p in parts[1:-1]]
    frames.append(ContinuationFrame(1, data=parts[-1], flags=["END_HEADERS"]))
    cb.send(*frames)
    status, h, _ = cb.response(1)
    assert (status, h.get("x-echo-test")) == (200, "continued")


def test_6_10_continuation_followed_by_other_frame(c):
    blk = block(c.request_fields("POST"))
    c.send(c.headers(1, blk=blk[:5], end_stream=False, end_headers=False),
           ContinuationFrame(1, data=blk[5:]),
           DataFrame(1, data=b"test", flags=["END_STREAM"]))
    c.expect_goaway(PROTOCOL_ERROR)


def test_6_10_continuation_stream_0(c):
    blk = block(c.request_fields())
    c.send(c.headers(1, blk=blk[:5], end_headers=False),
           frame(CONTINUATION, END_HEADERS, 0, blk[5:]))
    c.expect_goaway(PROTOCOL_ERROR)


def test_6_10_continuation_after_end_headers(c):
    c.post(1)
    c.send(ContinuationFrame(1, data=lit("x-dummy", "1"), flags=["END_HEADERS"]))
    c.expect_goaway(PROTOCOL_ERROR)


def test_6_10_continuation_after_continuation_end_headers(c):
    blk = block(c.request_fields("POST"))
    c.send(c.headers(1, blk=blk[:5], end_stream=False, end_headers=False),
           ContinuationFrame(1, data=blk[5:], flags=["END_HEADERS"]),
           ContinuationFrame(1, data=lit("x-dummy", "1"), flags=["END_HEADERS"]))
    c.expect_goaway(PROTOCOL_ERROR)


def test_6_10_continuation_after_data(c):
    c.post(1)
    c.send(DataFrame(1, data=b"test"),
           ContinuationFrame(1, data=lit("x-dummy", "1"), flags=["END_HEADERS"]))
    c.expect_goaway(PROTOCOL_ERROR)


def test_6_10_continuation_other_stream(c):
    blk = block(c.request_fields())
    c.send(c.headers(1, blk=blk[:5], end_headers=False),
           ContinuationFrame(3, data=blk[5:], flags=["END_HEADERS"]))
    c.expect_goaway(PROTOCOL_ERROR)


# =========================================================================== 7 error codes

def test_7_goaway_unknown_error_code(c):
    """An unknown error code triggers nothing special: with no stream open the connection
    just ends, and any GOAWAY of the server's says NO_ERROR."""
    c.send(GoAwayFrame(0, last_stream_id=0, error_code=0xff))
    c.expect_close()
    bad = [f for f in c.received if f.type == GOAWAY and f.error_code != NO_ERROR]
    assert not bad, c.transcript()


def test_7_rst_stream_unknown_error_code(c):
    c.post(1)
    c.send(RstStreamFrame(1, error_code=0xff))
    c.ping_ok()
    c.get(3)
    assert c.response(3)[0] == 200


# =========================================================================== 8.1 messages

def test_8_1_valid_request_200(cb):
    """A plain GET: the SETTINGS ACK came in the handshake; 200 with the app's body."""
    cb.get(1)
    status, h, body = cb.response(1)
    assert (status, body, h["content-length"]) == (200, b"x" * 32, "32")
    assert h["x-http-version"] in ("2", "HTTP/2")


def test_8_1_several_streams(c):
    c.get(1, "/?n=10")
    c.get(3, "/?n=20")
    c.post(5)
    c.send(DataFrame(5, data=b"12345", flags=["END_STREAM"]))
    assert c.response(1)[2] == b"x" * 10
    assert c.response(3)[2] == b"x" * 20
    assert c.response(5)[1]["x-body-len"] == "5"


def test_8_1_trailers_accepted(c):
    c.post(1)
    c.send(DataFrame(1, data=b"test"),
           c.headers(1, [("x-trailer", "ok")], end_stream=True))
    status, h, _ = c.response(1)
    assert (status, h["x-body-len"]) == (200, "4")


def test_8_1_second_headers_without_end_stream(c):
    """Trailers without END_STREAM: malformed, stream error PROTOCOL_ERROR."""
    c.post(1)
    c.send(DataFrame(1, data=b"test"),
           c.headers(1, [("x-trailer", "ok")], end_stream=False))
    c.expect_rst(1, PROTOCOL_ERROR)


def test_8_1_1_content_length_mismatch_single_data(both, conns):
    c = conns(both).handshake()
    c.post(1, extra=[("content-length", "1")])
    c.send(DataFrame(1, data=b"test", flags=["END_STREAM"]))
    c.expect_rst(1, PROTOCOL_ERROR)


def test_8_1_1_content_length_mismatch_multiple_data(c):
    c.post(1, extra=[("content-length", "10")])
    c.send(DataFrame(1, data=b"test"), DataFrame(1, data=b"test", flags=["END_STREAM"]))
    c.expect_rst(1, PROTOCOL_ERROR)


def test_8_1_1_content_length_exceeded_before_end(c):
    c.post(1, extra=[("content-length", "4")])
    c.send(DataFrame(1, data=b"testtest"))
    c.expect_rst(1, PROTOCOL_ERROR)


def test_8_1_1_content_length_without_data(c):
    c.send(c.headers(1, c.request_fields("POST", extra=[("content-length", "4")])))
    c.expect_rst(1, PROTOCOL_ERROR)


def test_8_1_1_content_length_matches(c):
    c.post(1, extra=[("content-length", "8")])
    c.send(DataFrame(1, data=b"test"), DataFrame(1, data=b"test", flags=["END_STREAM"]))
    status, h, _ = c.response(1)
    assert (status, h["x-body-len"]) == (200, "8")


# =========================================================================== 8.2 fields

def test_8_2_uppercase_header_name(both, conns):
    c = conns(both).handshake()
    c.send(c.headers(1, c.request_fields(extra=[("X-TEST", "ok")])))
    c.expect_rst(1, PROTOCOL_ERROR)


@pytest.mark.parametrize("name,value", [("connection", "keep-alive"), ("keep-alive", "5"),
                                        ("proxy-connection", "keep-alive"),
                                        ("transfer-encoding", "chunked"), ("upgrade", "h2c")])
def test_8_2_2_connection_specific_header(c, name, value):
    c.send(c.headers(1, c.request_fields(extra=[(name, value)])))
    c.expect_rst(1, PROTOCOL_ERROR)


def test_8_2_2_te_other_than_trailers(c):
    c.send(c.headers(1, c.request_fields(extra=[("te", "trailers, deflate")])))
    c.expect_rst(1, PROTOCOL_ERROR)


def test_8_2_2_te_trailers_accepted(c):
    c.send(c.headers(1, c.request_fields(extra=[("te", "trailers")])))
    assert c.response(1)[0] == 200


@pytest.mark.parametrize("name,value", [
    ("x-test", "a\r\nx-injected: 1"), ("x-test", "a\nb"), ("x-test", "a\x00b"),
    ("x-test", " leading"), ("x-test", "trailing\t"),
    ("x test", "1"), ("x-test:", "1"), ("", "empty-name"), ("x-t\x7fst", "1"),
], ids=["crlf", "lf", "nul", "leading-sp", "trailing-htab", "name-space", "name-colon",
        "name-empty", "name-del"])
def test_8_2_1_invalid_field(c, name, value):
    """RFC 9113 8.2.1: such a field makes the request malformed (stream error
    PROTOCOL_ERROR, a 400 response may come first)."""
    c.send(c.headers(1, c.request_fields(extra=[(name, value)])))
    c.expect_rst(1, PROTOCOL_ERROR)


# =========================================================================== 8.3 pseudo-headers

def test_8_3_unknown_pseudo_header(c):
    c.send(c.headers(1, c.request_fields() + [(":foo", "bar")]))
    c.expect_rst(1, PROTOCOL_ERROR)


def test_8_3_response_pseudo_header_in_request(c):
    c.send(c.headers(1, c.request_fields() + [(":status", "200")]))
    c.expect_rst(1, PROTOCOL_ERROR)


def test_8_3_pseudo_header_in_trailers(c):
    c.post(1)
    c.send(DataFrame(1, data=b"test"), c.headers(1, [(":method", "POST")]))
    c.expect_rst(1, PROTOCOL_ERROR)


def test_8_3_pseudo_header_after_regular(c):
    f = c.request_fields()
    c.send(c.headers(1, f[:3] + [("x-test", "1")] + f[3:]))
    c.expect_rst(1, PROTOCOL_ERROR)


def _without(fields, name):
    return [(k, v) for k, v in fields if k != name]


def test_8_3_1_empty_path(c):
    c.send(c.headers(1, c.request_fields(path="")))
    c.expect_rst(1, PROTOCOL_ERROR)


@pytest.mark.parametrize("name", [":method", ":scheme", ":path"])
def test_8_3_1_missing_pseudo_header(c, name):
    c.send(c.headers(1, _without(c.request_fields(), name)))
    c.expect_rst(1, PROTOCOL_ERROR)


@pytest.mark.parametrize("name,value", [(":method", "GET"), (":scheme", "http"), (":path", "/"),
                                        (":authority", "example.com")])
def test_8_3_1_duplicated_pseudo_header(c, name, value):
    f = c.request_fields()
    i = [k for k, _ in f].index(name)
    c.send(c.headers(1, f[:i + 1] + [(name, value)] + f[i + 1:]))
    c.expect_rst(1, PROTOCOL_ERROR)


def test_8_5_connect_with_scheme_and_path(c):
    """CONNECT requests omit :scheme and :path (RFC 9113 8.5)."""
    c.send(c.headers(1, [(":method", "CONNECT"), (":scheme", "http"), (":path", "/"),
                         (":authority", "example.com:443")]))
    c.expect_rst(1, PROTOCOL_ERROR)


# =========================================================================== 8.4 server push

def test_8_4_push_promise_from_client(c):
    c.post(1)
    c.send(PushPromiseFrame(1, promised_stream_id=2, data=block(c.request_fields()),
                            flags=["END_HEADERS"]))
    c.expect_goaway(PROTOCOL_ERROR)


# =========================================================================== HPACK (RFC 7541)

def test_hpack_2_3_3_indexed_field_invalid_index(c):
    """Index 70 with an empty dynamic table (61 static entries)."""
    c.send(frame(HEADERS, END_STREAM | END_HEADERS, 1,
                 b"\x82\x86\x84" + lit(":authority", c.authority) + hint(70, 7, 0x80)))
    c.expect_goaway(COMPRESSION_ERROR)


def test_hpack_2_3_3_literal_field_invalid_name_index(c):
    c.send(frame(HEADERS, END_STREAM | END_HEADERS, 1,
                 b"\x82\x86\x84" + lit(":authority", c.authority) + hint(70, 6, 0x40)
                 + hstr("value")))
    c.expect_goaway(COMPRESSION_ERROR)


def test_hpack_6_1_index_zero(c):
    c.send(frame(HEADERS, END_STREAM | END_HEADERS, 1, b"\x82\x86\x84\x80"))
    c.expect_goaway(COMPRESSION_ERROR)


def test_hpack_6_3_table_size_update_over_limit(c):
    limit = c.server_settings.get(HEADER_TABLE_SIZE, 4096)
    c.send(frame(HEADERS, END_STREAM | END_HEADERS, 1,
                 hint(limit + 1, 5, 0x20) + block(c.request_fields())))
    c.expect_goaway(COMPRESSION_ERROR)


def test_hpack_4_2_table_size_update_after_fields(c):
    """A dynamic table size update must come at the beginning of a block."""
    c.send(frame(HEADERS, END_STREAM | END_HEADERS, 1, block(c.request_fields()) + b"\x20"))
    c.expect_goaway(COMPRESSION_ERROR)


def test_hpack_6_3_table_size_updates_at_start_accepted(c):
    c.send(frame(HEADERS, END_STREAM | END_HEADERS, 1,
                 b"\x20" + hint(4096, 5, 0x20) + block(c.request_fields())))
    assert c.response(1)[0] == 200


def _huffman_value(c, encoded):
    return (b"\x82\x86\x84" + lit(":authority", c.authority) + b"\x00" + hstr("x-test")
            + hint(len(encoded), 7, 0x80) + encoded)


def test_hpack_5_2_huffman_padding_too_long(c):
    """'a' (00011) then 11 bits of padding."""
    c.send(frame(HEADERS, END_STREAM | END_HEADERS, 1, _huffman_value(c, b"\x1f\xff")))
    c.expect_goaway(COMPRESSION_ERROR)


def test_hpack_5_2_huffman_padding_not_eos_prefix(c):
    """'a' (00011) padded with zeros instead of the EOS prefix (ones)."""
    c.send(frame(HEADERS, END_STREAM | END_HEADERS, 1, _huffman_value(c, b"\x18")))
    c.expect_goaway(COMPRESSION_ERROR)


def test_hpack_5_2_huffman_eos_symbol(c):
    """The EOS symbol (30 one bits) inside a string literal."""
    c.send(frame(HEADERS, END_STREAM | END_HEADERS, 1, _huffman_value(c, b"\xff\xff\xff\xff")))
    c.expect_goaway(COMPRESSION_ERROR)


def test_hpack_huffman_and_dynamic_table_accepted(c):
    """Huffman strings and the dynamic table across requests: stream 1 adds x-test to the
    table (incremental indexing); stream 3 names it by index 62; a full hpack encoder
    (Huffman, indexing) serves stream 5."""
    c.send(frame(HEADERS, END_STREAM | END_HEADERS, 1,
                 b"\x82\x86\x84" + lit(":authority", c.authority)
                 + lit_indexed("x-test", "indexed")))
    assert c.response(1)[1].get("x-echo-test") == "indexed"
    c.send(frame(HEADERS, END_STREAM | END_HEADERS, 3,
                 b"\x82\x86\x84" + lit(":authority", c.authority) + hint(62, 7, 0x80)))
    assert c.response(3)[1].get("x-echo-test") == "indexed"
    enc = hpack.Encoder()
    blk = enc.encode(c.request_fields(extra=[("x-test", "huffman")]), huffman=True)
    # the server's decoder already holds our x-test entry: start a fresh table with a
    # size update to 0 (empties it) and back, then the encoder's own block
    c.send(frame(HEADERS, END_STREAM | END_HEADERS, 5, b"\x20" + hint(4096, 5, 0x20) + blk))
    assert c.response(5)[1].get("x-echo-test") == "huffman"
