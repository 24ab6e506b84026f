"""ASGI WebSockets (RFC 6455, RFC 7692 permessage-deflate) in the real `corsac` process.

Apps live in tests/apps/ws_apps.py.  Every test runs under both event loops: the `loop`
fixture is parametrized over asyncio and uvloop and every server gets `--loop <name>`.
Most tests share one server per (app, flags, loop) for the whole module; tests about
timeouts, memory, signals or many connections start their own.

Two clients are used: the `websockets` library's sync client (a well-behaved peer, with
compression by default), and `RawWS` below, which builds frames by hand so the tests can
send what no library would (unmasked frames, bad opcodes, broken UTF-8...) and see
exactly what the server puts on the wire.  Apps report what they saw through messages,
or by appending lines to the file named by CORSAC_TEST_RECORD (tagged per connection)."""
import asyncio
import base64
import hashlib
import json
import os
import random
import re
import signal
import socket
import struct
import sys
import time
import zlib
from collections import namedtuple
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.sync.client import connect as ws_connect

sys.path.insert(0, str(Path(__file__).parent))
from conftest import Server, exchange, status_of  # noqa: E402

TIMEOUT = 5
STARTUP = 30        # a server's start may include the editable install's rebuild
pytestmark = pytest.mark.timeout(60)
LOOPS = ["asyncio", "uvloop"]

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MiB = 1024 * 1024


# --------------------------------------------------------------------------- helpers

def wait_for(pred, timeout=5.0, interval=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    return pred()


def read_lines(path):
    try:
        return Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []


_tag_counter = [0]


def new_tag(name):
    _tag_counter[0] += 1
    return f"{name}-{os.getpid()}-{_tag_counter[0]}"


def tagged(path, tag):
    """The record lines of one tag, without the tag."""
    return [line.split(" ", 1)[1] for line in read_lines(path) if line.startswith(tag + " ")]


def wait_tagged(path, tag, pred, timeout=5.0):
    """Waits until pred(lines of tag) is true; returns the lines either way."""
    wait_for(lambda: pred(tagged(path, tag)), timeout)
    return tagged(path, tag)


def has_prefix(prefix):
    return lambda lines: any(ln.startswith(prefix) for ln in lines)


def worker_pids(server):
    pid = server.proc.pid
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        kids = []
    return [int(k) for k in kids] or [pid]


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def log_since(server, mark):
    return server.log()[mark:]


def new_key():
    return base64.b64encode(os.urandom(16)).decode()


def accept_for(key):
    return base64.b64encode(hashlib.sha1(key.encode("latin-1") + GUID).digest()).decode()


def apply_mask(data, key):
    n = len(data)
    if not n:
        return data
    k = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(k, "big")).to_bytes(n, "big")


def frame(opcode, payload=b"", fin=True, rsv=0, mask=True):
    """One frame as bytes.  rsv: the three RSV bits as a number (4 = RSV1)."""
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    m = 0x80 if mask else 0
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", b0, m | n)
    elif n < 65536:
        head = struct.pack("!BBH", b0, m | 126, n)
    else:
        head = struct.pack("!BBQ", b0, m | 127, n)
    if mask:
        key = os.urandom(4)
        return head + key + apply_mask(payload, key)
    return head + payload


def close_payload(code=None, reason=b""):
    if code is None:
        return b""
    if isinstance(reason, str):
        reason = reason.encode("utf-8")
    return struct.pack("!H", code) + reason


Frame = namedtuple("Frame", "fin rsv opcode payload")


def close_info(f):
    """(code, reason bytes) of a close frame; (1005, b"") when it carries no code."""
    assert f.opcode == OP_CLOSE, f
    if not f.payload:
        return 1005, b""
    return struct.unpack("!H", f.payload[:2])[0], f.payload[2:]


def handshake_bytes(server, path="/", method="GET", version="HTTP/1.1", override=None,
                    extra=()):
    """A handshake request; override maps header -> value (None removes it)."""
    h = {"Host": f"127.0.0.1:{server.port}", "Upgrade": "websocket", "Connection": "Upgrade",
         "Sec-WebSocket-Key": new_key(), "Sec-WebSocket-Version": "13"}
    for k, v in (override or {}).items():
        if v is None:
            h.pop(k, None)
        else:
            h[k] = v
    lines = [f"{method} {path} {version}"] + [f"{k}: {v}" for k, v in h.items()]
    lines += [f"{k}: {v}" for k, v in extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8"), h.get("Sec-WebSocket-Key")


def parse_params(ext_header):
    """'permessage-deflate; a; b=10' -> {'a': None, 'b': '10'} (first extension only)."""
    parts = [p.strip() for p in ext_header.split(",")[0].split(";")]
    out = {}
    for p in parts[1:]:
        k, _, v = p.partition("=")
        out[k.strip().lower()] = v.strip().strip('"') or None
    return parts[0].lower(), out


class RawWS:
    """A WebSocket client over a plain socket.  The constructor sends the handshake and
    reads the response head (status, headers); frames are then built and read by hand."""

    def __init__(self, server, path="/", override=None, extra=(), timeout=TIMEOUT,
                 rcvbuf=None, method="GET", version="HTTP/1.1", deflate=None):
        self.server = server
        self.timeout = timeout
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect((server.host, server.port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.control = []           # control frames seen by recv_message
        extra = list(extra)
        if deflate:
            extra.append(("Sec-WebSocket-Extensions", deflate))
        req, self.key = handshake_bytes(server, path, method, version, override, extra)
        self.sock.sendall(req)
        head = self._until(b"\r\n\r\n")
        self.head_raw = head
        lines = head[:-4].split(b"\r\n")
        m = re.match(rb"HTTP/1\.[01] (\d{3})", lines[0])
        assert m, f"bad status line {lines[0]!r}"
        self.status = int(m.group(1))
        self.headers = []
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            self.headers.append((name.decode("latin-1").strip().lower(),
                                 value.strip().decode("latin-1")))
        self.deflate = None
        ext = self.header("sec-websocket-extensions")
        if self.status == 101 and ext:
            name, params = parse_params(ext)
            assert name == "permessage-deflate", ext
            self.deflate = params
            sbits = int(params.get("server_max_window_bits") or 15)
            cbits = int(params.get("client_max_window_bits") or 15)
            self._inflate_args = -sbits
            self._deflate_args = (6, zlib.DEFLATED, -max(cbits, 9))
            self._inflater = zlib.decompressobj(-sbits)
            self._deflater = zlib.compressobj(*self._deflate_args)

    # ---- HTTP side
    def header(self, name):
        vals = [v for k, v in self.headers if k == name.lower()]
        return vals[-1] if vals else None

    def header_all(self, name):
        return [v for k, v in self.headers if k == name.lower()]

    def expect_101(self):
        assert self.status == 101, (self.head_raw, self.buf[:300])
        assert (self.header("upgrade") or "").lower() == "websocket", self.headers
        assert "upgrade" in [t.strip().lower() for t in (self.header("connection") or "").split(",")]
        assert self.header("sec-websocket-accept") == accept_for(self.key), self.headers
        return self

    def read_body(self):
        """The body of a non-101 response (Content-Length, chunked, or until close)."""
        cl, te = self.header("content-length"), self.header("transfer-encoding")
        if te and te.lower() == "chunked":
            out = []
            while True:
                size = int(self._until(b"\r\n").split(b";")[0].strip(), 16)
                if size == 0:
                    while self._until(b"\r\n") != b"\r\n":      # trailers
                        pass
                    return b"".join(out)
                out.append(self._exact(size))
                self._exact(2)
        if cl is not None:
            return self._exact(int(cl))
        while True:
            try:
                self._more()
            except EOFError:
                break
        out, self.buf = self.buf, b""
        return out

    # ---- bytes
    def _more(self):
        try:
            data = self.sock.recv(1 << 20)
        except ConnectionResetError:
            data = b""
        if not data:
            raise EOFError
        self.buf += data

    def _until(self, delim):
        while delim not in self.buf:
            self._more()
        i = self.buf.index(delim) + len(delim)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def _exact(self, n):
        while len(self.buf) < n:
            self._more()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def send_raw(self, data):
        self.sock.sendall(data)

    def send_frame(self, opcode, payload=b"", fin=True, rsv=0, mask=True):
        self.sock.sendall(frame(opcode, payload, fin, rsv, mask))

    def _compress(self, data):
        if self.deflate is not None and "client_no_context_takeover" in self.deflate:
            self._deflater = zlib.compressobj(*self._deflate_args)
        out = self._deflater.compress(data) + self._deflater.flush(zlib.Z_SYNC_FLUSH)
        if not out:
            # zlib writes nothing for a flush right after a flush: the empty message is then
            # an empty stored block, the payload 0x00 (RFC 7692 7.2.3.6)
            return b"\x00"
        assert out.endswith(b"\x00\x00\xff\xff")
        return out[:-4]

    def send_message(self, data, fragments=1, compress=False):
        """A text (str) or binary (bytes) message, in `fragments` frames."""
        opcode = OP_TEXT if isinstance(data, str) else OP_BINARY
        payload = data.encode("utf-8") if isinstance(data, str) else data
        rsv = 0
        if compress:
            payload, rsv = self._compress(payload), 4
        step = max(1, -(-len(payload) // fragments))
        pieces = [payload[i:i + step] for i in range(0, len(payload), step)] or [b""]
        out = []
        for i, p in enumerate(pieces):
            out.append(frame(opcode if i == 0 else OP_CONT, p, fin=i == len(pieces) - 1,
                             rsv=rsv if i == 0 else 0))
        self.sock.sendall(b"".join(out))

    def send_close(self, code=None, reason=b""):
        self.send_frame(OP_CLOSE, close_payload(code, reason))

    # ---- frames
    def recv_frame(self, timeout=None):
        """The next frame, or None at EOF.  Server frames must not be masked."""
        if timeout is not None:
            self.sock.settimeout(timeout)
        try:
            try:
                b0, b1 = self._exact(2)
            except EOFError:
                return None
            assert not b1 & 0x80, "the server sent a masked frame"
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", self._exact(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", self._exact(8))[0]
            return Frame(bool(b0 & 0x80), (b0 >> 4) & 7, b0 & 0x0F, self._exact(n))
        finally:
            if timeout is not None:
                self.sock.settimeout(self.timeout)

    def recv_message(self, timeout=None):
        """The next data message (str or bytes), reassembled and decompressed; control frames
        met on the way go to self.control.  A close frame raises AssertionError."""
        parts, opcode, compressed = [], None, False
        while True:
            f = self.recv_frame(timeout)
            assert f is not None, "EOF while waiting for a message"
            if f.opcode >= 0x8:
                assert f.fin and len(f.payload) <= 125, f
                self.control.append(f)
                assert f.opcode != OP_CLOSE, f"close frame {close_info(f)} instead of a message"
                continue
            if opcode is None:
                assert f.opcode in (OP_TEXT, OP_BINARY), f"unexpected {f.opcode:#x}"
                opcode = f.opcode
                compressed = bool(f.rsv & 4)
                assert f.rsv & 3 == 0, f
                assert not compressed or self.deflate is not None, "RSV1 without deflate"
            else:
                assert f.opcode == OP_CONT and f.rsv == 0, f
            parts.append(f.payload)
            if f.fin:
                break
        data = b"".join(parts)
        if compressed:
            if "server_no_context_takeover" in self.deflate:
                self._inflater = zlib.decompressobj(self._inflate_args)
            data = self._inflater.decompress(data + b"\x00\x00\xff\xff")
        return data.decode("utf-8") if opcode == OP_TEXT else data

    def expect_close(self, timeout=TIMEOUT):
        """Reads until the server's close frame: (code, reason bytes, data frames before it).
        code is None when the server closed TCP without a close frame."""
        before = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"no close frame within {timeout} s (frames: {before})"
            try:
                f = self.recv_frame(left)
            except socket.timeout:
                raise AssertionError(f"no close frame within {timeout} s (frames: {before})")
            if f is None:
                return None, b"", before
            if f.opcode == OP_CLOSE:
                code, reason = close_info(f)
                return code, reason, before
            if f.opcode not in (OP_PING, OP_PONG):
                before.append(f)

    def eof(self, timeout=3):
        """True when the server closes TCP within timeout (further bytes are dropped)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                return True
            except socket.timeout:
                return False
            finally:
                self.sock.settimeout(self.timeout)
            if not data:
                return True

    def reset(self):
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_ws(server, path="/", **kw):
    return RawWS(server, path, **kw).expect_101()


def client(server, path="/", **kw):
    """The websockets sync client (compression on unless told otherwise)."""
    kw.setdefault("open_timeout", TIMEOUT)
    kw.setdefault("close_timeout", 2)
    kw.setdefault("max_size", None)
    kw.setdefault("proxy", None)
    return ws_connect(f"ws://{server.host}:{server.port}{path}", **kw)


def closed_exc(ws, timeout=TIMEOUT):
    """Waits for the server to close; returns the ConnectionClosed raised by recv()."""
    with pytest.raises(ConnectionClosed) as ei:
        while True:
            ws.recv(timeout=timeout)
    return ei.value


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module", params=LOOPS)
def loop(request):
    """Module-scoped, so pytest runs all the asyncio tests, then all the uvloop ones."""
    return request.param


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    d = tmp_path_factory.mktemp("ws")
    record = d / "record.txt"
    record.write_text("")
    return {"dir": d, "record": record}


@pytest.fixture(scope="module")
def _pool(paths, loop):
    made, dead = {}, []
    env = {"CORSAC_TEST_RECORD": str(paths["record"])}

    def get(app, args):
        args = ("--loop", loop) + tuple(args)
        key = (app, args)
        s = made.get(key)
        if s is not None and s.proc.poll() is not None:
            dead.append(s)
            s = None
        if s is None:
            s = Server(app, args, env=env, tmp_path=paths["dir"], wait=False)
            s.record = paths["record"]
            s.wait_listening(STARTUP)
            made[key] = s
        return s
    yield get
    for s in made.values():
        if s.proc.poll() is not None:
            dead.append(s)
        s.stop()
    assert not dead, "corsac died during the tests:\n" + "\n".join(
        f"{d.app} {d.args} rc={d.proc.returncode}\n{d.log()[-3000:]}" for d in dead)


@pytest.fixture
def srv(_pool):
    """srv("ws_apps:echo", "--ws-max-size", "1000") -> a module-shared Server on this loop;
    its record file is server.record."""
    def get(app, *args):
        return _pool(app, args)
    return get


@pytest.fixture
def fresh(loop, tmp_path):
    """fresh(app, *args, env=..., loop=True) -> a new Server of its own (on this loop unless
    loop=False); its CORSAC_TEST_RECORD file is server.record."""
    servers = []

    def start(app, *args, env=None, with_loop=True):
        rec = tmp_path / f"record-{new_tag('f')}.txt"
        rec.write_text("")
        e = {"CORSAC_TEST_RECORD": str(rec)}
        e.update(env or {})
        s = Server(app, (("--loop", loop) if with_loop else ()) + args, env=e,
                   tmp_path=tmp_path, wait=False)
        s.record = rec
        servers.append(s)
        s.wait_listening(STARTUP)
        return s
    yield start
    for s in servers:
        s.stop()


def echo_ok(server, text="still serving"):
    with client(server, f"/?tag={new_tag('ok')}") as ws:
        ws.send(text)
        assert ws.recv(timeout=TIMEOUT) == text


# --------------------------------------------------------------------------- 1. echo

def test_echo_text_and_bytes(srv):
    s = srv("ws_apps:echo")
    tag = new_tag("echo")
    with client(s, f"/?tag={tag}") as ws:
        ws.send("hello")
        got = ws.recv(timeout=TIMEOUT)
        assert got == "hello" and isinstance(got, str)
        ws.send(b"\x00\x01\xfe\xff")
        got = ws.recv(timeout=TIMEOUT)
        assert got == b"\x00\x01\xfe\xff" and isinstance(got, bytes)
        for i in range(20):
            ws.send(f"msg {i}")
        assert [ws.recv(timeout=TIMEOUT) for _ in range(20)] == [f"msg {i}" for i in range(20)]
    lines = wait_tagged(s.record, tag, has_prefix("disconnect"))
    assert lines[:3] == ["accepted", "got text 5", "got bytes 4"], lines
    assert lines[-1] == "disconnect 1000 ''", lines


def test_echo_empty_messages(srv):
    s = srv("ws_apps:echo")
    with client(s, f"/?tag={new_tag('empty')}") as ws:
        ws.send("")
        got = ws.recv(timeout=TIMEOUT)
        assert got == "" and isinstance(got, str)
        ws.send(b"")
        got = ws.recv(timeout=TIMEOUT)
        assert got == b"" and isinstance(got, bytes)


def test_echo_empty_messages_raw(srv):
    s = srv("ws_apps:echo")
    with open_ws(s, f"/?tag={new_tag('empty-raw')}") as ws:
        ws.send_frame(OP_TEXT, b"")
        assert ws.recv_message() == ""
        ws.send_frame(OP_BINARY, b"")
        assert ws.recv_message() == b""
        # an empty message in three empty frames
        ws.send_raw(frame(OP_TEXT, b"", fin=False) + frame(OP_CONT, b"", fin=False)
                    + frame(OP_CONT, b""))
        assert ws.recv_message() == ""


def test_echo_unicode_text(srv):
    s = srv("ws_apps:echo")
    text = "héllo wörld — 日本語 🦊✓ \u0000 \U0010FFFF end"
    with client(s, f"/?tag={new_tag('uni')}") as ws:
        ws.send(text)
        assert ws.recv(timeout=TIMEOUT) == text


@pytest.mark.parametrize("size", [MiB, 8 * MiB], ids=["1MiB", "8MiB"])
@pytest.mark.parametrize("kind", ["bytes", "text"])
def test_echo_large_messages(srv, size, kind):
    s = srv("ws_apps:echo")
    if kind == "bytes":
        data = os.urandom(size)
    else:
        data = base64.b64encode(os.urandom(size * 3 // 4)).decode()[:size]
    with client(s, f"/?tag={new_tag('large')}") as ws:
        ws.send(data)
        got = ws.recv(timeout=15)
    assert type(got) is type(data) and len(got) == len(data)
    assert got == data


@pytest.mark.parametrize("size", [125, 126, 65535, 65536, 65537])
def test_echo_length_encodings_raw(srv, size):
    """The 7-bit, 16-bit and 64-bit length forms, both ways, at their edges."""
    s = srv("ws_apps:echo")
    data = os.urandom(size)
    with open_ws(s, f"/?tag={new_tag('len')}") as ws:
        ws.send_frame(OP_BINARY, data)
        assert ws.recv_message() == data


def test_echo_fragmented_websockets(srv):
    s = srv("ws_apps:echo")
    with client(s, f"/?tag={new_tag('frag')}") as ws:
        ws.send(iter(["frag-1 ", "frag-2 ", "é🦊", ""]))
        assert ws.recv(timeout=TIMEOUT) == "frag-1 frag-2 é🦊"
        ws.send(iter([b"\x00" * 1000, b"\x01" * 70000, b"\x02"]))
        assert ws.recv(timeout=TIMEOUT) == b"\x00" * 1000 + b"\x01" * 70000 + b"\x02"


def test_echo_fragmented_raw(srv):
    s = srv("ws_apps:echo")
    tag = new_tag("frag-raw")
    with open_ws(s, f"/?tag={tag}") as ws:
        ws.send_message("Hello, fragmented wörld", fragments=5)
        assert ws.recv_message() == "Hello, fragmented wörld"
        data = os.urandom(200000)
        ws.send_message(data, fragments=7)
        assert ws.recv_message() == data
    lines = wait_tagged(s.record, tag, has_prefix("disconnect"))
    # the app got each message once, whole
    assert lines[1:3] == ["got text 23", "got bytes 200000"], lines


@pytest.mark.parametrize("split", [
    [b"ab\xc3", b"\xa9cd"],                         # a 2-byte character over two frames
    [b"\xf0", b"\x9f", b"\xa6\x8a", b"!"],            # a 4-byte character over three frames
    [b"", b"\xe2\x82\xac", b""],                      # empty fragments around a character
])
def test_utf8_split_across_fragments_is_valid(srv, split):
    s = srv("ws_apps:echo")
    with open_ws(s, f"/?tag={new_tag('utf8split')}") as ws:
        out = b"".join(frame(OP_TEXT if i == 0 else OP_CONT, p, fin=i == len(split) - 1)
                       for i, p in enumerate(split))
        ws.send_raw(out)
        assert ws.recv_message() == b"".join(split).decode("utf-8")


def test_frames_sent_one_byte_at_a_time(srv):
    s = srv("ws_apps:echo")
    with open_ws(s, f"/?tag={new_tag('bytewise')}") as ws:
        data = frame(OP_TEXT, "slow but whole ✓".encode()) + frame(OP_BINARY, b"x" * 300)
        for i in range(len(data)):
            ws.send_raw(data[i:i + 1])
        assert ws.recv_message() == "slow but whole ✓"
        assert ws.recv_message() == b"x" * 300


def test_many_messages_in_one_write(srv):
    s = srv("ws_apps:echo")
    with open_ws(s, f"/?tag={new_tag('batch')}") as ws:
        ws.send_raw(b"".join(frame(OP_TEXT, f"m{i}".encode()) for i in range(300)))
        assert [ws.recv_message() for _ in range(300)] == [f"m{i}" for i in range(300)]


def test_utf8_random_fragmentation(srv):
    """A long multi-byte text cut into random fragments (1-7 bytes), so characters straddle
    frames at every offset: echoed whole."""
    s = srv("ws_apps:echo")
    rnd = random.Random(11)
    text = "".join(rnd.choice("aé€🦊ж\u0800\U0001F600") for _ in range(3000))
    data = text.encode("utf-8")
    cuts, i = [], 0
    while i < len(data):
        n = rnd.randint(1, 7)
        cuts.append(data[i:i + n])
        i += n
    with open_ws(s, f"/?tag={new_tag('utf8rnd')}") as ws:
        ws.send_raw(b"".join(frame(OP_TEXT if k == 0 else OP_CONT, c, fin=k == len(cuts) - 1)
                             for k, c in enumerate(cuts)))
        assert ws.recv_message() == text


def test_upgrade_on_kept_alive_connection(srv):
    """A plain HTTP request first, then the upgrade on the same connection."""
    s = srv("ws_apps:recorder")
    sock = s.connect()
    try:
        sock.sendall(f"GET /first HTTP/1.1\r\nHost: 127.0.0.1:{s.port}\r\n\r\n".encode())
        data = b""
        while b"upgrade=-\n" not in data:
            b = sock.recv(65536)
            assert b, data
            data += b
        assert data.startswith(b"HTTP/1.1 200 "), data
        req, key = handshake_bytes(s, "/then-ws")
        sock.sendall(req)
        data = b""
        while b"\r\n\r\n" not in data:
            b = sock.recv(65536)
            assert b, data
            data += b
        assert data.startswith(b"HTTP/1.1 101 "), data
        assert accept_for(key).encode() in data
        sock.sendall(frame(OP_TEXT, b"over ws"))
        rest = data.partition(b"\r\n\r\n")[2]
        while len(rest) < 9:
            rest += sock.recv(65536)
        assert rest[:9] == b"\x81\x07over ws", rest
    finally:
        sock.close()


def test_first_frame_in_the_same_write_as_the_handshake(srv):
    """A client that does not wait for the 101 (RFC 6455 says it should, but the bytes after
    the head must not be lost by the server either way)."""
    s = srv("ws_apps:echo")
    req, key = handshake_bytes(s, f"/?tag={new_tag('eager')}")
    sock = s.connect()
    try:
        sock.sendall(req + frame(OP_TEXT, b"eager"))
        data = b""
        deadline = time.monotonic() + TIMEOUT
        while b"\x81\x05eager" not in data and time.monotonic() < deadline:
            b = sock.recv(65536)
            if not b:
                break
            data += b
        assert data.startswith(b"HTTP/1.1 101 "), data
        assert data.endswith(b"\r\n\r\n\x81\x05eager"), data
    finally:
        sock.close()


def test_app_sends_while_receiving(srv):
    """A background task sends while the app waits in receive(): both streams arrive, each
    in order."""
    s = srv("ws_apps:ticker")
    with client(s, "/?n=100") as ws:
        for i in range(20):
            ws.send(f"m{i}")
            time.sleep(0.003)
        got = [ws.recv(timeout=TIMEOUT) for _ in range(120)]
    ticks = [g for g in got if g.startswith("tick ")]
    echoes = [g for g in got if g.startswith("echo ")]
    assert ticks == [f"tick {i}" for i in range(100)], ticks
    assert echoes == [f"echo m{i}" for i in range(20)], echoes


def test_receive_event_has_only_the_key_that_applies(srv):
    s = srv("ws_apps:inspect")
    with client(s, "/") as ws:
        ws.send("text")
        t = json.loads(ws.recv(timeout=TIMEOUT))
        ws.send(b"bin")
        b = json.loads(ws.recv(timeout=TIMEOUT))
    assert t == {"type": "websocket.receive", "keys": ["text", "type"],
                 "types": {"type": "str", "text": "str"}}, t
    assert b == {"type": "websocket.receive", "keys": ["bytes", "type"],
                 "types": {"type": "str", "bytes": "bytes"}}, b


def test_server_frames_unmasked_without_rsv(srv):
    """What the server sends when no extension is negotiated: unmasked frames (checked by
    recv_frame), RSV bits clear, text as opcode 1 and bytes as opcode 2."""
    s = srv("ws_apps:echo")
    with open_ws(s, f"/?tag={new_tag('wire')}") as ws:
        assert ws.header("sec-websocket-extensions") is None
        ws.send_frame(OP_TEXT, b"abc")
        f = ws.recv_frame()
        assert f == Frame(True, 0, OP_TEXT, b"abc"), f
        ws.send_frame(OP_BINARY, b"\x00")
        f = ws.recv_frame()
        assert f == Frame(True, 0, OP_BINARY, b"\x00"), f


# --------------------------------------------------------------------------- 2. scope

def test_scope_contents(srv):
    s = srv("ws_apps:scope_app")
    with open_ws(s, "/some/caf%C3%A9/x%20y?x=1&y=%20z",
                 extra=[("Sec-WebSocket-Protocol", " chat,superchat ,  v2.proto"),
                        ("X-Custom", "Abc")]) as ws:
        port = ws.sock.getsockname()[1]
        data = json.loads(ws.recv_message())
        # no subprotocol was picked: none in the response
        assert ws.header("sec-websocket-protocol") is None, ws.headers
    sc, types = data["scope"], data["types"]
    assert sc["type"] == "websocket"
    assert sc["asgi"] == {"version": "3.0", "spec_version": "2.4"}
    assert sc["http_version"] == "1.1"
    assert sc["scheme"] == "ws"
    assert sc["path"] == "/some/café/x y"
    assert sc["raw_path"] == "/some/caf%C3%A9/x%20y"
    assert sc["query_string"] == "x=1&y=%20z"
    assert sc["root_path"] == ""
    assert sc["client"] == ["127.0.0.1", port]
    assert sc["server"] == ["127.0.0.1", s.port]
    assert sc["subprotocols"] == ["chat", "superchat", "v2.proto"]
    assert "websocket.http.response" in sc["extensions"], sc["extensions"]
    assert sc["extensions"]["websocket.http.response"] == {}
    assert "method" not in sc or sc["method"] == "GET"
    assert types["path"] == "str" and types["raw_path"] == "bytes"
    assert types["query_string"] == "bytes" and types["subprotocols"] == "list"
    assert types["headers"] == "list" and types["extensions"] == "dict"
    assert data["header_types"] == [["tuple", 2, "bytes", "bytes"]] or \
        data["header_types"] == [["list", 2, "bytes", "bytes"]], data["header_types"]
    assert data["subprotocol_types"] == ["str"]
    names = [k for k, _ in sc["headers"]]
    assert all(n == n.lower() for n in names), names
    hdrs = dict(sc["headers"])
    for n in ("host", "upgrade", "connection", "sec-websocket-key", "sec-websocket-version",
              "sec-websocket-protocol"):
        assert n in hdrs, (n, names)
    assert hdrs["x-custom"] == "Abc"
    assert hdrs["sec-websocket-version"] == "13"
    assert data["first"] == {"type": "websocket.connect"}


def test_scope_no_subprotocols_is_empty_list(srv):
    s = srv("ws_apps:scope_app")
    with client(s, "/plain") as ws:
        data = json.loads(ws.recv(timeout=TIMEOUT))
    assert data["scope"]["subprotocols"] == []
    assert data["scope"]["path"] == "/plain" and data["scope"]["query_string"] == ""


def test_scope_root_path(srv):
    s = srv("ws_apps:scope_app", "--root-path", "/mnt")
    with client(s, "/x/y?q=1") as ws:
        sc = json.loads(ws.recv(timeout=TIMEOUT))["scope"]
    # like the HTTP scope (test_asgi.py::test_scope_root_path)
    assert sc["root_path"] == "/mnt"
    assert sc["path"] == "/mnt/x/y"
    assert sc["raw_path"] == "/mnt/x/y"
    assert sc["query_string"] == "q=1"


def test_scope_state_from_lifespan(fresh):
    s = fresh("ws_apps:lifespan_state", "--lifespan", "on")
    pid = worker_pids(s)[0]
    with client(s, "/") as ws:
        data = json.loads(ws.recv(timeout=TIMEOUT))
    assert data["state"] == {"answer": 42, "pid": pid}


# --------------------------------------------------------------------------- 3. accept

def test_subprotocol_negotiation_and_extra_headers(srv):
    s = srv("ws_apps:subproto")
    with client(s, "/", subprotocols=["a", "b"]) as ws:
        assert ws.subprotocol == "b"
        h = ws.response.headers
        assert h["Sec-WebSocket-Protocol"] == "b"
        assert h["x-extra"] == "yes"
        assert h["set-cookie"] == "a=b"
        ws.send("hi")
        assert ws.recv(timeout=TIMEOUT) == "hi"


def test_subprotocol_none_chosen_has_no_header(srv):
    s = srv("ws_apps:subproto")
    with open_ws(s, "/?pick=none", extra=[("Sec-WebSocket-Protocol", "a, b")]) as ws:
        assert ws.header("sec-websocket-protocol") is None, ws.headers
        assert ws.header("x-extra") == "yes"


def test_handshake_response_head(srv):
    s = srv("ws_apps:echo")
    with open_ws(s, f"/?tag={new_tag('head')}") as ws:
        assert ws.head_raw.startswith(b"HTTP/1.1 101 "), ws.head_raw
        assert ws.header("transfer-encoding") is None, ws.headers
        assert ws.header("content-length") in (None, "0"), ws.headers
        assert len(ws.header_all("sec-websocket-accept")) == 1
        assert ws.buf == b"", "bytes after the 101 before any message"
        ws.send_frame(OP_TEXT, b"ok")
        assert ws.recv_message() == "ok"


@pytest.mark.parametrize("case", ["header-crlf", "header-lf", "header-name-space", "header-str",
                                  "subprotocol-crlf", "subprotocol-bytes"])
def test_invalid_accept_raises_runtime_error(srv, case):
    """A websocket.accept with a header or subprotocol that cannot go on the wire raises
    RuntimeError in the app (no response splitting); a correct accept after it works."""
    s = srv("ws_apps:bad_accept")
    tag = new_tag("badaccept")
    with RawWS(s, f"/?tag={tag}&case={case}", extra=[("Sec-WebSocket-Protocol", "a")]) as ws:
        assert b"injected" not in ws.head_raw.lower(), "response splitting!"
        ws.expect_101()
        assert ws.recv_message() == "clean"
    assert wait_tagged(s.record, tag, lambda ln: ln) == ["accept RuntimeError"]


@pytest.mark.parametrize("override", [
    {"Connection": "keep-alive, Upgrade"},
    {"Connection": "upgrade"},
    {"Upgrade": "WebSocket"},
    {"Sec-WebSocket-Version": " 13 "},
], ids=["connection-list", "connection-lower", "upgrade-case", "version-spaces"])
def test_handshake_variants_accepted(srv, override):
    s = srv("ws_apps:echo")
    with open_ws(s, f"/?tag={new_tag('variant')}", override=override) as ws:
        ws.send_frame(OP_TEXT, b"ok")
        assert ws.recv_message() == "ok"


# --------------------------------------------------------------------------- 4. refusals

def test_close_before_accept_is_403(srv):
    s = srv("ws_apps:close_before_accept")
    tag = new_tag("c403")
    ws = RawWS(s, f"/?tag={tag}")
    try:
        assert ws.status == 403, ws.head_raw
        ws.read_body()
        assert ws.eof(3), "connection not closed after the 403"
    finally:
        ws.close()
    assert wait_tagged(s.record, tag, lambda ln: ln) == ["closed"]


def test_denial_response(srv):
    s = srv("ws_apps:deny")
    ws = RawWS(s, "/?status=401")
    try:
        assert ws.status == 401, ws.head_raw
        assert ws.header("x-denied") == "yes", ws.headers
        assert ws.header("content-type") == "text/plain"
        assert ws.header("sec-websocket-accept") is None
        assert ws.read_body() == b"denied: no token"
        assert ws.eof(3), "connection not closed after the denial response"
    finally:
        ws.close()


def test_denial_response_websockets_client(srv):
    from websockets.exceptions import InvalidStatus
    s = srv("ws_apps:deny")
    with pytest.raises(InvalidStatus) as ei:
        client(s, "/?status=418")
    assert ei.value.response.status_code == 418
    assert ei.value.response.body == b"denied: no token"


@pytest.mark.parametrize("app,secret", [("raise_before", "corsac-ws-secret-before"),
                                        ("return_before", None)])
def test_app_ends_before_accept_is_500(srv, app, secret):
    s = srv(f"ws_apps:{app}")
    mark = len(s.log())
    ws = RawWS(s, "/")
    try:
        assert ws.status == 500, ws.head_raw
        body = ws.read_body()
        assert len(body) < 1024 and b"Traceback" not in body and b"secret" not in body, body
        assert ws.eof(3)
    finally:
        ws.close()
    if secret:
        assert wait_for(lambda: "Exception in ASGI application" in log_since(s, mark), 3), \
            log_since(s, mark)
        assert wait_for(lambda: secret in log_since(s, mark), 3)
        assert "Traceback" in log_since(s, mark)
    # still serving
    ws = RawWS(s, "/")
    assert ws.status == 500
    ws.close()


# --------------------------------------------------------------------------- 5. close codes

def test_client_close_with_code_and_reason(srv):
    s = srv("ws_apps:echo")
    tag = new_tag("c4001")
    with open_ws(s, f"/?tag={tag}") as ws:
        ws.send_close(4001, "bye")
        code, reason, before = ws.expect_close()
        assert before == []
        assert code == 4001, (code, reason)      # the server echoes the code it got
        assert ws.eof(3), "server did not close TCP after the closing handshake"
    lines = wait_tagged(s.record, tag, has_prefix("disconnect"))
    assert lines[-1] == "disconnect 4001 'bye'", lines


def test_client_close_websockets_client(srv):
    s = srv("ws_apps:echo")
    tag = new_tag("c4002")
    with client(s, f"/?tag={tag}") as ws:
        ws.send("x")
        ws.recv(timeout=TIMEOUT)
        ws.close(4002, "bye bye ✓")
        assert ws.close_code == 4002
    lines = wait_tagged(s.record, tag, has_prefix("disconnect"))
    assert lines[-1] == "disconnect 4002 'bye bye ✓'", lines


def test_client_close_without_code_is_1005(srv):
    s = srv("ws_apps:echo")
    tag = new_tag("c1005")
    with open_ws(s, f"/?tag={tag}") as ws:
        ws.send_close()
        code, reason, _ = ws.expect_close()
        assert code is not None, "no close frame in answer"
        assert code in (1005, 1000), code      # no code, or a normal one
        assert ws.eof(3)
    lines = wait_tagged(s.record, tag, has_prefix("disconnect"))
    assert lines[-1] == "disconnect 1005 ''", lines


@pytest.mark.parametrize("how", ["close", "reset", "half-close"])
def test_client_drops_tcp_is_1006(srv, how):
    s = srv("ws_apps:echo")
    tag = new_tag("c1006")
    ws = open_ws(s, f"/?tag={tag}")
    ws.send_frame(OP_TEXT, b"ping")
    assert ws.recv_message() == "ping"
    if how == "reset":
        ws.reset()
    elif how == "close":
        ws.close()
    else:
        ws.sock.shutdown(socket.SHUT_WR)
    try:
        lines = wait_tagged(s.record, tag, has_prefix("disconnect"))
        assert lines[-1] == "disconnect 1006 ''", lines
    finally:
        ws.close()


@pytest.mark.parametrize("query,code,reason", [("", 4000, "done"),
                                               ("?code=1001&reason=going", 1001, "going"),
                                               ("?reason=-", 1000, "")])
def test_app_close_code_and_reason(srv, query, code, reason):
    s = srv("ws_apps:app_close")
    tag = new_tag("appclose")
    q = (query + "&" if query else "?") + f"tag={tag}"
    with client(s, "/" + q) as ws:
        assert ws.recv(timeout=TIMEOUT) == "closing"
        exc = closed_exc(ws)
        assert exc.rcvd is not None, exc
        assert (exc.rcvd.code, exc.rcvd.reason) == (code, reason)
    lines = wait_tagged(s.record, tag, has_prefix("send-after"))
    assert lines[0] == "close-sent", lines
    assert lines[1].startswith("after-close disconnect "), lines
    assert lines[2] == "close-again ok", lines
    assert lines[3] == "send-after ClientDisconnected oserror=True", lines


def test_app_close_raw_wire(srv):
    """The close frame on the wire: code and reason; the server closes TCP after the
    client's answer."""
    s = srv("ws_apps:app_close")
    tag = new_tag("appclose-raw")
    with open_ws(s, f"/?tag={tag}&code=4000&reason=done") as ws:
        assert ws.recv_message() == "closing"
        code, reason, before = ws.expect_close()
        assert (code, reason) == (4000, b"done")
        ws.send_close(4000)
        assert ws.eof(3)
    lines = wait_tagged(s.record, tag, has_prefix("after-close"))
    assert lines[1].startswith("after-close disconnect "), lines


VALID_CLOSE_CODES = {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014}


@pytest.mark.parametrize("query", [
    "code=1000&reason=" + "r" * 124,                  # 126-byte payload: too long
    "code=1000&reason=" + "%C3%A9" * 62,              # 124 bytes of é
    "code=1005", "code=1006", "code=999", "code=1015", "code=5000",
], ids=["reason-124", "reason-utf8-124", "1005", "1006", "999", "1015", "5000"])
def test_app_close_invalid_never_reaches_the_wire(srv, query):
    """The app asks for a close the protocol cannot carry (reason over 123 bytes, a code a
    close frame must not hold): whatever the server does (RuntimeError in the app, then
    1011; or a fixed-up close), the frame on the wire is a valid close frame."""
    s = srv("ws_apps:app_close")
    with open_ws(s, f"/?tag={new_tag('badclose')}&{query}") as ws:
        assert ws.recv_message() == "closing"
        f = ws.recv_frame()
        assert f is not None and f.opcode == OP_CLOSE, f
        assert len(f.payload) <= 125, len(f.payload)
        code, reason = close_info(f)
        assert code in VALID_CLOSE_CODES or 3000 <= code <= 4999, code
        reason.decode("utf-8")


def test_app_return_closes_1000(srv):
    s = srv("ws_apps:return_after")
    mark = len(s.log())
    with client(s, "/") as ws:
        assert ws.recv(timeout=TIMEOUT) == "bye-soon"
        ws.send("go")
        exc = closed_exc(ws)
        assert exc.rcvd is not None and exc.rcvd.code == 1000, exc
    time.sleep(0.1)
    assert "Exception" not in log_since(s, mark), log_since(s, mark)


def test_app_raise_closes_1011(srv):
    s = srv("ws_apps:raise_after")
    mark = len(s.log())
    with client(s, "/") as ws:
        assert ws.recv(timeout=TIMEOUT) == "hello"
        ws.send("go")
        exc = closed_exc(ws)
        assert exc.rcvd is not None and exc.rcvd.code == 1011, exc
        assert "secret" not in exc.rcvd.reason
    assert wait_for(lambda: "Exception in ASGI application" in log_since(s, mark), 3), \
        log_since(s, mark)
    assert wait_for(lambda: "corsac-ws-secret-after" in log_since(s, mark), 3)
    assert "Traceback" in log_since(s, mark)
    echo_ok(srv("ws_apps:echo"))


# --------------------------------------------------------------------------- 6. protocol errors

def _bad_utf8_fragments(*pieces):
    return b"".join(frame(OP_TEXT if i == 0 else OP_CONT, p, fin=i == len(pieces) - 1)
                    for i, p in enumerate(pieces))


PROTOCOL_ERRORS = [
    ("unmasked", frame(OP_TEXT, b"bad", mask=False), 1002),
    ("unmasked-close", frame(OP_CLOSE, close_payload(1000), mask=False), 1002),
    ("rsv1-no-extension", frame(OP_TEXT, b"bad", rsv=4), 1002),
    ("rsv2", frame(OP_TEXT, b"bad", rsv=2), 1002),
    ("rsv3", frame(OP_BINARY, b"bad", rsv=1), 1002),
    ("opcode-3", frame(0x3, b"bad"), 1002),
    ("opcode-7", frame(0x7, b""), 1002),
    ("opcode-0xB", frame(0xB, b"bad"), 1002),
    ("opcode-0xF", frame(0xF, b""), 1002),
    ("ping-126-bytes", frame(OP_PING, b"p" * 126), 1002),
    ("pong-126-bytes", frame(OP_PONG, b"p" * 126), 1002),
    ("close-126-bytes", frame(OP_CLOSE, close_payload(1000, b"r" * 124)), 1002),
    ("fragmented-ping", frame(OP_PING, b"p", fin=False) + frame(OP_CONT, b"q"), 1002),
    ("continuation-without-start", frame(OP_CONT, b"bad"), 1002),
    ("final-continuation-without-start", frame(OP_CONT, b"bad", fin=True), 1002),
    ("text-inside-fragmented", frame(OP_TEXT, b"a", fin=False) + frame(OP_TEXT, b"b"), 1002),
    ("binary-inside-fragmented",
     frame(OP_BINARY, b"a", fin=False) + frame(OP_BINARY, b"b"), 1002),
] + [
    (f"close-code-{c}", frame(OP_CLOSE, close_payload(c)), 1002)
    for c in (0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999)
] + [
    ("close-1-byte", frame(OP_CLOSE, b"\x03"), 1002),
    ("close-reason-bad-utf8", frame(OP_CLOSE, close_payload(1000, b"\xff\xfe")), 1007),
    ("text-bad-utf8", frame(OP_TEXT, b"ab\xffcd"), 1007),
    ("text-overlong", frame(OP_TEXT, b"\xc0\xaf"), 1007),
    ("text-surrogate", frame(OP_TEXT, b"\xed\xa0\x80"), 1007),
    ("text-above-10ffff", frame(OP_TEXT, b"\xf4\x90\x80\x80"), 1007),
    ("text-truncated-at-end", frame(OP_TEXT, b"ab\xc3"), 1007),
    ("fragments-bad-continuation", _bad_utf8_fragments(b"ab\xc3", b"(cd"), 1007),
    ("fragments-truncated-at-end", _bad_utf8_fragments(b"ab", b"\xe2\x82"), 1007),
    ("fragments-bad-in-middle", _bad_utf8_fragments(b"ok", b"\xff", b"ok"), 1007),
]


def _check_protocol_error(s, data, code, path_extra="", deflate=None, sanity=True):
    tag = new_tag("proto")
    with open_ws(s, f"/?tag={tag}{path_extra}", deflate=deflate) as ws:
        if sanity:
            ws.send_frame(OP_TEXT, b"sane")
            assert ws.recv_message() == "sane"
        try:
            ws.send_raw(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        got, reason, before = ws.expect_close()
        assert got == code, f"expected close {code}, got {got} {reason!r}"
        assert before == [], f"the server sent data after the bad frame: {before}"
        assert ws.eof(3), "the server did not close TCP after the protocol error"
    lines = wait_tagged(s.record, tag, has_prefix("disconnect"))
    expected_got = ["got text 4"] if sanity else []
    assert [ln for ln in lines if ln.startswith("got ")] == expected_got, \
        f"the app saw the bad message: {lines}"
    assert lines[-1].startswith(f"disconnect {code} "), lines
    return lines


@pytest.mark.parametrize("data,code", [pytest.param(d, c, id=i) for i, d, c in PROTOCOL_ERRORS])
def test_protocol_error_closes(srv, data, code):
    _check_protocol_error(srv("ws_apps:echo"), data, code)


def test_protocol_error_before_any_message(srv):
    _check_protocol_error(srv("ws_apps:echo"), frame(OP_TEXT, b"x", mask=False), 1002,
                          sanity=False)


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011,
                                  1012, 1013, 1014, 3000, 3999, 4000, 4999])
def test_valid_close_codes_accepted(srv, code):
    s = srv("ws_apps:echo")
    tag = new_tag("vclose")
    with open_ws(s, f"/?tag={tag}") as ws:
        ws.send_close(code, "ok")
        got, _, _ = ws.expect_close()
        assert got is not None, "no close frame in answer"
        assert got == code or (got in (1000, 1005) and code != 1002), got
        assert ws.eof(3)
    lines = wait_tagged(s.record, tag, has_prefix("disconnect"))
    assert lines[-1] == f"disconnect {code} 'ok'", lines


MAX = ("--ws-max-size", "1000")


@pytest.mark.parametrize("kind,size", [("bytes", 1000), ("text", 1000)])
def test_max_size_exact_is_fine(srv, kind, size):
    s = srv("ws_apps:echo", *MAX)
    with open_ws(s, f"/?tag={new_tag('max-ok')}") as ws:
        data = b"b" * size if kind == "bytes" else "t" * size
        ws.send_message(data)
        assert ws.recv_message() == data
        ws.send_message(data, fragments=4)
        assert ws.recv_message() == data


@pytest.mark.parametrize("data", [
    pytest.param(frame(OP_BINARY, b"b" * 1001), id="bytes-1001"),
    pytest.param(frame(OP_BINARY, b"b" * 2000), id="bytes-2000"),
    pytest.param(frame(OP_TEXT, b"t" * 2000), id="text-2000"),
    pytest.param(frame(OP_BINARY, b"b" * 70000), id="bytes-64bit-length"),
    pytest.param(frame(OP_BINARY, b"b" * 600, fin=False) + frame(OP_CONT, b"b" * 600),
                 id="fragments-1200"),
    pytest.param(b"".join(frame(OP_TEXT if i == 0 else OP_CONT, b"t" * 100, fin=i == 19)
                          for i in range(20)), id="20-fragments-2000"),
])
def test_max_size_exceeded_is_1009(srv, data):
    _check_protocol_error(srv("ws_apps:echo", *MAX), data, 1009)


def test_default_max_size_is_16_mib(srv):
    s = srv("ws_apps:echo")
    _check_protocol_error(s, frame(OP_BINARY, b"\x00" * (16 * MiB + 1)), 1009)


@pytest.mark.parametrize("length", [16 * MiB + 1, 1 << 40, (1 << 63) - 1])
def test_declared_length_over_max_closes_at_once(srv, length):
    """Only the frame header, announcing more than --ws-max-size: the server closes with 1009
    without waiting for (or allocating) the payload."""
    s = srv("ws_apps:echo")
    head = struct.pack("!BBQ", 0x80 | OP_BINARY, 0x80 | 127, length) + os.urandom(4)
    _check_protocol_error(s, head + b"x" * 100, 1009)
    assert s.proc.poll() is None


def test_max_size_does_not_limit_what_the_app_sends(srv):
    s = srv("ws_apps:big_text", *MAX)
    with open_ws(s, "/?n=5000") as ws:
        ws.send_frame(OP_TEXT, b"go")
        assert len(ws.recv_message()) == 5000


def test_max_size_applies_after_decompression(srv):
    s = srv("ws_apps:echo", *MAX)
    tag = new_tag("max-deflate")
    with open_ws(s, f"/?tag={tag}", deflate="permessage-deflate") as ws:
        assert ws.deflate is not None, ws.headers
        ws.send_message("s" * 900, compress=True)
        assert ws.recv_message() == "s" * 900
        payload = ws._compress(b"z" * 5000)
        assert len(payload) < 1000
        ws.send_frame(OP_TEXT, payload, rsv=4)
        code, _, before = ws.expect_close()
        assert code == 1009 and before == [], (code, before)
    lines = wait_tagged(s.record, tag, has_prefix("disconnect"))
    assert lines[-1].startswith("disconnect 1009 "), lines
    assert "got text 5000" not in lines


# --------------------------------------------------------------------------- 7. ping / pong

@pytest.mark.parametrize("payload", [b"", b"hello-ping", bytes(range(125))],
                         ids=["empty", "short", "125"])
def test_client_ping_gets_pong(srv, payload):
    s = srv("ws_apps:echo")
    tag = new_tag("ping")
    with open_ws(s, f"/?tag={tag}") as ws:
        ws.send_frame(OP_PING, payload)
        f = ws.recv_frame()
        assert f == Frame(True, 0, OP_PONG, payload), f
        ws.send_frame(OP_TEXT, b"after")
        assert ws.recv_message() == "after"
    lines = wait_tagged(s.record, tag, has_prefix("disconnect"))
    assert lines == ["accepted", "got text 5", "disconnect 1006 ''"], lines


def test_unsolicited_pong_is_ignored(srv):
    s = srv("ws_apps:echo")
    tag = new_tag("pong")
    with open_ws(s, f"/?tag={tag}") as ws:
        ws.send_frame(OP_PONG, b"unasked")
        ws.send_frame(OP_TEXT, b"after")
        f = ws.recv_frame()
        assert f == Frame(True, 0, OP_TEXT, b"after"), f


def test_ping_interleaved_in_fragmented_message(srv):
    s = srv("ws_apps:echo")
    tag = new_tag("interleave")
    with open_ws(s, f"/?tag={tag}") as ws:
        ws.send_raw(frame(OP_TEXT, b"Hel", fin=False) + frame(OP_PING, b"p1")
                    + frame(OP_PONG, b"x") + frame(OP_CONT, b"lo", fin=False)
                    + frame(OP_PING, b"p2") + frame(OP_CONT, b" there"))
        f1, f2 = ws.recv_frame(), ws.recv_frame()
        assert (f1.opcode, f1.payload) == (OP_PONG, b"p1"), f1
        assert (f2.opcode, f2.payload) == (OP_PONG, b"p2"), f2
        assert ws.recv_message() == "Hello there"
    lines = wait_tagged(s.record, tag, has_prefix("disconnect"))
    assert [ln for ln in lines if ln.startswith("got")] == ["got text 11"], lines


def test_close_inside_fragmented_message(srv):
    """A close frame between the fragments of a message: the closing handshake happens and
    the app never gets the partial message."""
    s = srv("ws_apps:echo")
    tag = new_tag("close-mid")
    with open_ws(s, f"/?tag={tag}") as ws:
        ws.send_raw(frame(OP_TEXT, b"partial", fin=False) + frame(OP_CLOSE, close_payload(1000)))
        code, _, before = ws.expect_close()
        assert code == 1000 and before == [], (code, before)
        assert ws.eof(3)
    lines = wait_tagged(s.record, tag, has_prefix("disconnect"))
    assert lines == ["accepted", "disconnect 1000 ''"], lines


def test_server_pings(srv):
    s = srv("ws_apps:echo", "--ws-ping-interval", "0.2")
    with open_ws(s, f"/?tag={new_tag('srvping')}") as ws:
        t0 = time.monotonic()
        f = ws.recv_frame(timeout=2)
        assert f is not None and f.opcode == OP_PING, f
        assert time.monotonic() - t0 < 1.5
        assert f.fin and len(f.payload) <= 125
        ws.send_frame(OP_PONG, f.payload)
        f = ws.recv_frame(timeout=2)
        assert f is not None and f.opcode == OP_PING, f
        ws.send_frame(OP_PONG, f.payload)
        ws.send_frame(OP_TEXT, b"still here")
        assert ws.recv_message() == "still here"


def test_server_ping_timeout_disconnects(srv):
    s = srv("ws_apps:echo", "--ws-ping-interval", "0.2", "--ws-ping-timeout", "0.3")
    tag = new_tag("pingtimeout")
    with open_ws(s, f"/?tag={tag}") as ws:
        pings, close_code = 0, None
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                f = ws.recv_frame(timeout=deadline - time.monotonic())
            except socket.timeout:
                break
            if f is None:
                break
            if f.opcode == OP_PING:
                pings += 1                       # never answered
            elif f.opcode == OP_CLOSE:
                close_code = close_info(f)[0]
                assert ws.eof(4), "no TCP close after the ping-timeout close frame"
                break
        else:
            pytest.fail("still connected 5 s later")
        assert pings >= 1
        assert close_code in (1011, None), close_code
        assert time.monotonic() < deadline, "not disconnected within 5 s"
    lines = wait_tagged(s.record, tag, has_prefix("disconnect"))
    assert lines[-1] == "disconnect 1006 ''", lines


def test_pong_answering_client_stays_connected(srv):
    s = srv("ws_apps:echo", "--ws-ping-interval", "0.2", "--ws-ping-timeout", "0.3")
    with client(s, f"/?tag={new_tag('pongok')}", ping_interval=None) as ws:
        time.sleep(1.5)                          # several server pings, answered by the client
        ws.send("alive")
        assert ws.recv(timeout=TIMEOUT) == "alive"


# --------------------------------------------------------------------------- 8. handshake errors

def _recorder_lines(path):
    return [ln for ln in read_lines(path) if ln.startswith("called ")]


BAD_HANDSHAKES = [
    ("version-8", dict(override={"Sec-WebSocket-Version": "8"}), (426,)),
    ("version-14", dict(override={"Sec-WebSocket-Version": "14"}), (426,)),
    ("version-missing", dict(override={"Sec-WebSocket-Version": None}), (400, 426)),
    ("key-missing", dict(override={"Sec-WebSocket-Key": None}), (400,)),
    ("key-short", dict(override={"Sec-WebSocket-Key": "abc"}), (400,)),
    ("key-15-bytes", dict(override={"Sec-WebSocket-Key":
                                    base64.b64encode(b"x" * 15).decode()}), (400,)),
    ("key-17-bytes", dict(override={"Sec-WebSocket-Key":
                                    base64.b64encode(b"x" * 17).decode()}), (400,)),
    ("key-not-base64", dict(override={"Sec-WebSocket-Key": "!!!!!!!!!!!!!!!!!!!!!!=="}),
     (400,)),
    ("post", dict(method="POST", extra=[("Content-Length", "0")]), (400,)),
    ("http-1.0", dict(version="HTTP/1.0"), (400,)),
]


@pytest.mark.parametrize("kw,statuses", [pytest.param(k, st, id=i) for i, k, st in BAD_HANDSHAKES])
def test_bad_handshake_never_reaches_app(srv, kw, statuses):
    s = srv("ws_apps:recorder")
    before = len(_recorder_lines(s.record))
    req, _ = handshake_bytes(s, "/bad", **kw)
    resp, closed = exchange(s, req)
    assert status_of(resp) in statuses, resp[:400]
    if status_of(resp) == 426:
        assert re.search(rb"\r\nsec-websocket-version: *13\r\n", resp.lower()), resp[:400]
    assert b"\r\nupgrade:" not in resp.lower().split(b"\r\n\r\n")[0], resp[:400]
    assert closed, "connection not closed after the handshake error"
    time.sleep(0.05)
    assert _recorder_lines(s.record)[before:] == [], "the app was called"
    # and a good one right after is recorded (else the check above proves nothing)
    with open_ws(s, "/good") as ws:
        ws.send_frame(OP_TEXT, b"x")
        assert ws.recv_message() == "x"
    assert _recorder_lines(s.record)[before:] == ["called websocket /good"]


def test_no_ws_flag_passes_upgrade_as_http(srv):
    s = srv("ws_apps:recorder", "--no-ws")
    before = len(_recorder_lines(s.record))
    req, _ = handshake_bytes(s, "/nows", extra=[("Connection", "close")])
    resp, _ = exchange(s, req)
    assert status_of(resp) == 200, resp[:400]
    assert resp.endswith(b"http GET /nows upgrade=websocket\n"), resp
    assert _recorder_lines(s.record)[before:] == ["called http /nows"]


def test_wsgi_app_gets_upgrade_as_http(fresh, loop):
    if loop != "asyncio":
        pytest.skip("WSGI: no event loop")
    s = fresh("wsgi_apps:environ_app", with_loop=False)
    req, _ = handshake_bytes(s, "/wsgi-up")
    resp, _ = exchange(s, req)
    assert status_of(resp) == 200, resp[:400]
    head, _, body = resp.partition(b"\r\n\r\n")
    assert b"sec-websocket-accept" not in head.lower()
    assert b'"HTTP_UPGRADE": "websocket"' in body, body[:2000]


# --------------------------------------------------------------------------- 9. compression

def test_deflate_negotiated_by_default(srv):
    s = srv("ws_apps:echo")
    text = "compress me please " * 20000
    with client(s, f"/?tag={new_tag('deflate')}") as ws:
        ext = ws.response.headers.get("Sec-WebSocket-Extensions") or ""
        assert "permessage-deflate" in ext, ws.response.headers
        for _ in range(3):
            ws.send(text)
            assert ws.recv(timeout=TIMEOUT) == text
        ws.send(b"\x00" * 100000)
        assert ws.recv(timeout=TIMEOUT) == b"\x00" * 100000
        ws.send("tiny")
        assert ws.recv(timeout=TIMEOUT) == "tiny"


def test_no_deflate_flag(srv):
    s = srv("ws_apps:echo", "--no-ws-per-message-deflate")
    with client(s, f"/?tag={new_tag('nodeflate')}") as ws:
        assert "Sec-WebSocket-Extensions" not in ws.response.headers, ws.response.headers
        ws.send("x" * 10000)
        assert ws.recv(timeout=TIMEOUT) == "x" * 10000


def test_no_deflate_flag_rsv1_is_protocol_error(srv):
    s = srv("ws_apps:echo", "--no-ws-per-message-deflate")
    tag = new_tag("nodeflate-rsv1")
    with open_ws(s, f"/?tag={tag}", deflate="permessage-deflate") as ws:
        assert ws.header("sec-websocket-extensions") is None
        ws.send_frame(OP_TEXT, zlib.compress(b"x")[2:-4], rsv=4)
        code, _, _ = ws.expect_close()
        assert code == 1002


def test_client_without_compression_gets_no_extension(srv):
    s = srv("ws_apps:echo")
    with client(s, f"/?tag={new_tag('nocomp')}", compression=None) as ws:
        assert "Sec-WebSocket-Extensions" not in ws.response.headers, ws.response.headers
        ws.send("y" * 10000)
        assert ws.recv(timeout=TIMEOUT) == "y" * 10000


DEFLATE_FACTORIES = {
    "default": {},
    "client-no-takeover": dict(client_no_context_takeover=True),
    "server-no-takeover": dict(server_no_context_takeover=True),
    "server-bits-10": dict(server_max_window_bits=10),
    "client-bits-9": dict(client_max_window_bits=9),
    "client-bits-offer": dict(client_max_window_bits=True),
    "all-off": dict(server_no_context_takeover=True, client_no_context_takeover=True,
                    server_max_window_bits=9, client_max_window_bits=9),
}


@pytest.mark.parametrize("name", list(DEFLATE_FACTORIES))
def test_deflate_parameters_round_trip(srv, name):
    kw = DEFLATE_FACTORIES[name]
    s = srv("ws_apps:echo")
    rnd = random.Random(7)
    msgs = ["hello " * 5000, "hello " * 5000, "world ✓ " * 3000, "t",
            bytes(rnd.randrange(4) for _ in range(50000)), os.urandom(3000), "", b""]
    # empty ones right after compressed ones too (see test_deflate_empty_message_...)
    msgs += ["again " * 100, "", "again " * 100, b"", b"", "end " * 100]
    with client(s, f"/?tag={new_tag('params')}", compression=None,
                extensions=[ClientPerMessageDeflateFactory(**kw)]) as ws:
        ext = ws.response.headers.get("Sec-WebSocket-Extensions") or ""
        name_, params = parse_params(ext)
        assert name_ == "permessage-deflate", ext
        if kw.get("server_no_context_takeover"):
            assert "server_no_context_takeover" in params, ext
        if kw.get("server_max_window_bits"):
            assert int(params["server_max_window_bits"]) <= kw["server_max_window_bits"], ext
        if isinstance(kw.get("client_max_window_bits"), int) and \
                kw["client_max_window_bits"] is not True and "client_max_window_bits" in params:
            assert int(params["client_max_window_bits"]) <= kw["client_max_window_bits"], ext
        for _ in range(2):
            for m in msgs:
                ws.send(m)
                assert ws.recv(timeout=TIMEOUT) == m


@pytest.mark.parametrize("offer", [
    "permessage-deflate",
    "permessage-deflate; client_max_window_bits",
    "permessage-deflate; server_no_context_takeover",
    "permessage-deflate; client_no_context_takeover",
    "permessage-deflate; server_max_window_bits=11; client_max_window_bits=12",
    "x-unknown-ext, permessage-deflate; server_no_context_takeover",
])
def test_deflate_on_the_wire(srv, offer):
    """The server really compresses what the app sends (RSV1, much smaller), honours the
    negotiated context takeover, and decompresses what the client sends."""
    s = srv("ws_apps:big_text")
    with open_ws(s, "/?n=100000", deflate=offer) as ws:
        assert ws.deflate is not None, ws.headers
        ext = ws.header("sec-websocket-extensions")
        assert "x-unknown-ext" not in ext, ext
        params = ws.deflate
        if "server_no_context_takeover" in offer:
            assert "server_no_context_takeover" in params, ext
        if "server_max_window_bits=11" in offer:
            assert int(params["server_max_window_bits"]) <= 11, ext
        if "client_max_window_bits" not in offer:
            assert "client_max_window_bits" not in params, ext
        sizes = []
        for i in range(3):
            ws.send_message(f"go {i}" * 100, compress=i % 2 == 0)
            f = ws.recv_frame()
            assert f.opcode == OP_TEXT and f.rsv == 4, (f.opcode, f.rsv)
            payload = f.payload
            while not f.fin:
                f = ws.recv_frame()
                assert f.opcode == OP_CONT and f.rsv == 0
                payload += f.payload
            sizes.append(len(payload))
            if "server_no_context_takeover" in params:
                ws._inflater = zlib.decompressobj(ws._inflate_args)
            text = ws._inflater.decompress(payload + b"\x00\x00\xff\xff").decode()
            assert text == ("corsac websocket compression " * 3449)[:100000]
        assert max(sizes) < 100000 // 10, sizes


@pytest.mark.parametrize("offer", ["permessage-deflate",
                                   "permessage-deflate; client_no_context_takeover"])
def test_deflate_client_messages_raw(srv, offer):
    """Compressed messages from the client: fragmented, empty (payload b"\\x00"),
    many in a row sharing the compression context (unless negotiated off), mixed with
    uncompressed ones."""
    s = srv("ws_apps:echo")
    with open_ws(s, f"/?tag={new_tag('deflate-in')}", deflate=offer) as ws:
        assert ws.deflate is not None
        text = "fragmented and compressed ✓ " * 2000
        ws.send_message(text, fragments=5, compress=True)
        assert ws.recv_message() == text
        # an empty message compressed is the payload 0x00 (RFC 7692 7.2.3.6)
        ws.send_frame(OP_BINARY, b"\x00", rsv=4)
        assert ws.recv_message() == b""
        ws.send_message("", compress=True)
        assert ws.recv_message() == ""
        for i in range(30):
            m = f"repeated message number {i % 3} " * 50
            ws.send_message(m, compress=i % 4 != 3)
            assert ws.recv_message() == m


@pytest.mark.parametrize("empty", ["", b""], ids=["text", "bytes"])
def test_deflate_empty_message_after_compressed_one(srv, empty):
    """With context takeover, the app sends a compressed message, then an empty one, then
    another compressed one.  An empty compressed message must be the payload 0x00 (RFC 7692
    7.2.3.6) or go uncompressed: a frame with RSV1 and no payload makes the client's inflater
    (which appends 00 00 ff ff) wait inside a stored block, and the next message fails."""
    s = srv("ws_apps:echo")
    with client(s, f"/?tag={new_tag('empty-deflate')}") as ws:
        assert "permessage-deflate" in (ws.response.headers.get("Sec-WebSocket-Extensions")
                                        or "")
        for m in ["hello " * 100, empty, "world " * 100, empty, empty, "end " * 100]:
            ws.send(m)
            assert ws.recv(timeout=TIMEOUT) == m
    with open_ws(s, f"/?tag={new_tag('empty-deflate-raw')}", deflate="permessage-deflate") as ws:
        ws.send_message("hello " * 100)
        assert ws.recv_message() == "hello " * 100
        ws.send_message(empty)
        f = ws.recv_frame()
        assert f.opcode in (OP_TEXT, OP_BINARY) and f.fin, f
        assert f.rsv == 0 or f.payload != b"", \
            "empty message sent as RSV1 with an empty payload (must be 0x00 or uncompressed)"


def test_deflate_rsv1_on_control_or_continuation_is_error(srv):
    s = srv("ws_apps:echo")
    for data in (frame(OP_PING, b"x", rsv=4),
                 frame(OP_TEXT, b"a", fin=False) + frame(OP_CONT, b"b", rsv=4)):
        _check_protocol_error(s, data, 1002, deflate="permessage-deflate")


def test_deflate_bad_compressed_data_closes(srv):
    """Garbage in a compressed message: the server closes (1007 in most servers, 1002 in
    some); the app never sees it."""
    s = srv("ws_apps:echo")
    tag = new_tag("badzlib")
    with open_ws(s, f"/?tag={tag}", deflate="permessage-deflate") as ws:
        ws.send_frame(OP_BINARY, b"\xff\xff\xff\xff garbage", rsv=4)
        code, _, before = ws.expect_close()
        assert code in (1002, 1007), code
        assert before == []
    lines = wait_tagged(s.record, tag, has_prefix("disconnect"))
    assert not [ln for ln in lines if ln.startswith("got")], lines


# --------------------------------------------------------------------------- 10. disconnects

SEND_FAILED = "send ClientDisconnected oserror=True corsac=True"


@pytest.mark.parametrize("how", ["close-frame", "tcp-close", "reset"])
def test_send_after_disconnect_raises_client_disconnected(srv, how):
    s = srv("ws_apps:send_after_disconnect")
    mark = len(s.log())
    tag = new_tag("sad")
    ws = open_ws(s, f"/?tag={tag}")
    assert wait_tagged(s.record, tag, lambda ln: ln) == ["accepted"]
    if how == "close-frame":
        ws.send_close(1000, "")
        assert ws.expect_close()[0] == 1000
        expected = "disconnect 1000 ''"
    elif how == "tcp-close":
        ws.close()
        expected = "disconnect 1006 ''"
    else:
        ws.reset()
        expected = "disconnect 1006 ''"
    try:
        lines = wait_tagged(s.record, tag, has_prefix("close "))
    finally:
        ws.close()
    assert lines == ["accepted", expected, SEND_FAILED, "close ok"], lines
    time.sleep(0.1)
    log = log_since(s, mark)
    assert "Traceback" not in log and "Exception in ASGI" not in log, log


def test_client_disconnected_class():
    import corsac
    assert issubclass(corsac.ClientDisconnected, OSError)


@pytest.mark.parametrize("how", ["close-frame", "tcp-close"])
def test_send_while_client_gone_in_sleep(srv, how):
    """The client goes while the app is busy elsewhere; the app's later sends raise
    ClientDisconnected, and receive() gives the disconnect."""
    s = srv("ws_apps:sleep_then_send")
    tag = new_tag("sleep")
    ws = open_ws(s, f"/?tag={tag}&sleep=0.6")
    assert wait_tagged(s.record, tag, lambda ln: ln) == ["accepted"]
    if how == "close-frame":
        ws.send_close(4005, "gone")
        assert ws.expect_close()[0] is not None
        assert ws.eof(3)
        expected = "then disconnect 4005 'gone'"
    else:
        ws.close()
        expected = "then disconnect 1006 ''"
    try:
        lines = wait_tagged(s.record, tag, has_prefix("then"))
    finally:
        ws.close()
    assert lines == ["accepted", SEND_FAILED, expected], lines


def test_invalid_send_messages_raise_runtime_error(srv):
    s = srv("ws_apps:bad_send")
    tag = new_tag("badsend")
    with client(s, f"/?tag={tag}") as ws:
        assert ws.recv(timeout=TIMEOUT) == "still-open"
        exc = closed_exc(ws)
        assert exc.rcvd is not None and exc.rcvd.code == 1000
    lines = dict(ln.split(" ", 1) for ln in tagged(s.record, tag))
    assert lines["neither"] == "RuntimeError", lines
    assert lines["both-none"] == "RuntimeError", lines
    assert lines["both"] == "RuntimeError", lines
    assert lines["text-bytes"] in ("RuntimeError", "TypeError"), lines
    assert lines["bytes-str"] in ("RuntimeError", "TypeError"), lines


# --------------------------------------------------------------------------- 11. backpressure

def test_backpressure_bounds_rss(fresh):
    s = fresh("ws_apps:flood")
    # warm up (imports, buffers) before the baseline
    with client(s, f"/?mb=2&tag={new_tag('warm')}", compression=None) as ws:
        assert sum(len(ws.recv(timeout=TIMEOUT)) for _ in range(32)) == 2 * MiB
    pids = worker_pids(s)
    base = sum(rss_kib(p) for p in pids)
    tag = new_tag("flood")
    mb = 50
    ws = open_ws(s, f"/?mb={mb}&tag={tag}", rcvbuf=65536, timeout=10)
    try:
        assert wait_tagged(s.record, tag, lambda ln: "started" in ln, 3)
        peak = base
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            peak = max(peak, sum(rss_kib(p) for p in pids))
            time.sleep(0.1)
        lines = tagged(s.record, tag)
        assert "done" not in lines, \
            "the app sent 50 MB to a client that reads nothing: send() did not wait"
        progress = [int(ln.split()[1]) for ln in lines if ln.startswith("progress")]
        assert not progress or progress[-1] <= 8, f"app got {progress[-1]} MiB ahead"
        assert peak - base < 40 * 1024, f"worker RSS grew by {(peak - base) // 1024} MiB"
        # now read it all: every byte arrives and the app finishes
        total = 0
        while total < mb * MiB:
            f = ws.recv_frame()
            assert f is not None, f"EOF after {total} bytes"
            assert f.opcode == OP_BINARY and len(f.payload) == 65536, f[:3]
            total += len(f.payload)
        assert total == mb * MiB
        assert wait_tagged(s.record, tag, lambda ln: "done" in ln, 5)[-1] == "done"
    finally:
        ws.close()


def test_inbound_backpressure_bounds_rss(fresh):
    """The app does not receive for 2 s while the client pushes 64 KiB messages as fast as
    it can: the server stops reading (a few MiB at most are taken in), memory stays flat,
    and afterwards the app gets every message."""
    s = fresh("ws_apps:sleeper")
    pid = worker_pids(s)[0]
    echo_warm = open_ws(s, f"/?tag={new_tag('warm')}&sleep=0")
    echo_warm.close()
    base = rss_kib(pid)
    tag = new_tag("inbound")
    ws = open_ws(s, f"/?tag={tag}&sleep=2")
    try:
        assert wait_tagged(s.record, tag, lambda ln: "accepted" in ln, 3)
        msg = frame(OP_BINARY, b"i" * 65536)
        ws.sock.setblocking(False)
        sent, pending, frames = 0, b"", 0
        deadline = time.monotonic() + 1.2
        while time.monotonic() < deadline:
            if not pending:
                pending = msg
            try:
                n = ws.sock.send(pending)
            except BlockingIOError:
                time.sleep(0.01)
                continue
            sent += n
            pending = pending[n:]
            if not pending:
                frames += 1
        growth = rss_kib(pid) - base
        assert sent < 24 * MiB, f"the server took in {sent // MiB} MiB the app did not ask for"
        assert growth < 24 * 1024, f"worker RSS grew by {growth // 1024} MiB"
        ws.sock.settimeout(10)
        if pending:
            ws.sock.sendall(pending)
            frames += 1
        ws.send_close(1000)
        assert ws.expect_close(10)[0] == 1000
    finally:
        ws.close()
    lines = wait_tagged(s.record, tag, has_prefix("drained"), 10)
    assert lines[-1] == f"drained {frames * 65536} bytes", (lines, frames)


# --------------------------------------------------------------------------- 12. timeouts

@pytest.mark.parametrize("flags,idle", [
    (("--timeout-keep-alive", "0.5"), 1.5),
    (("--body-read-timeout", "0.5"), 1.5),
    (("--header-read-timeout", "0.5"), 1.5),
    (("--request-timeout", "1"), 2.5),
], ids=["keep-alive", "body-read", "header-read", "request-timeout"])
def test_http_timeouts_do_not_close_open_websocket(fresh, flags, idle):
    s = fresh("ws_apps:echo", *flags)
    tag = new_tag("idle")
    with open_ws(s, f"/?tag={tag}") as ws:
        ws.send_frame(OP_TEXT, b"before")
        assert ws.recv_message() == "before"
        time.sleep(idle)                        # idle on purpose: the timeouts must not fire
        ws.send_frame(OP_TEXT, b"after")
        assert ws.recv_message() == "after"
    assert "disconnect" not in " ".join(tagged(s.record, tag)[:3])


# --------------------------------------------------------------------------- 13. graceful stop

def test_graceful_stop_closes_1001(fresh):
    s = fresh("ws_apps:echo", "--graceful-timeout", "5")
    tag = new_tag("graceful")
    with client(s, f"/?tag={tag}") as ws:
        ws.send("hi")
        assert ws.recv(timeout=TIMEOUT) == "hi"
        t0 = time.monotonic()
        s.proc.send_signal(signal.SIGTERM)
        exc = closed_exc(ws, timeout=4)
        assert time.monotonic() - t0 < 3, "the close frame did not come at once"
        assert exc.rcvd is not None and exc.rcvd.code == 1001, exc
    lines = wait_tagged(s.record, tag, has_prefix("disconnect"))
    assert lines[-1] == "disconnect 1001 ''" or lines[-1].startswith("disconnect 1001 "), lines
    assert s.proc.wait(6) == 0
    assert time.monotonic() - t0 < 5.5


def test_graceful_stop_raw_client_that_never_answers(fresh):
    """A client that ignores the 1001: the server still exits within --graceful-timeout."""
    s = fresh("ws_apps:echo", "--graceful-timeout", "2")
    tag = new_tag("graceful-raw")
    with open_ws(s, f"/?tag={tag}") as ws:
        t0 = time.monotonic()
        s.proc.send_signal(signal.SIGTERM)
        code, _, _ = ws.expect_close(timeout=3)
        assert code == 1001, code
        assert s.proc.wait(6) is not None
        assert time.monotonic() - t0 < 5


# --------------------------------------------------------------------------- 14. many connections

def test_200_concurrent_connections(fresh):
    from websockets.asyncio.client import connect as aconnect
    s = fresh("ws_apps:echo")
    uri = f"ws://{s.host}:{s.port}/?tag=many"

    async def one(i, start):
        async with aconnect(uri, open_timeout=10, proxy=None) as ws:
            await start.wait()
            for k in range(10):
                await ws.send(f"{i}-{k}")
            return [await asyncio.wait_for(ws.recv(), 10) for _ in range(10)]

    async def main():
        start = asyncio.Event()
        tasks = [asyncio.create_task(one(i, start)) for i in range(200)]
        # all 200 are open at once before any message goes
        await asyncio.sleep(0)
        while len(_opened()) < 200 and not any(t.done() for t in tasks):
            await asyncio.sleep(0.05)
        start.set()
        return await asyncio.wait_for(asyncio.gather(*tasks), 20)

    def _opened():
        return [ln for ln in read_lines(s.record) if ln == "many accepted"]

    results = asyncio.run(main())
    for i, got in enumerate(results):
        assert got == [f"{i}-{k}" for k in range(10)], (i, got)
    assert len(_opened()) == 200
