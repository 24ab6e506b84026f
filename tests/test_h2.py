"""HTTP/2 (h2c with prior knowledge and h2 over TLS) against the real `corsac` process.

Clients: httpx (http2=True), the `h2` library over raw sockets, a small raw frame client
(`RawH2`, hyperframe + hpack, for what a conforming client library will not send or would
reject on receipt), curl and nghttp.  Apps: tests/apps/h2_apps.py (`wsgi_app`, `asgi_app`);
every test about app-visible behaviour runs for WSGI and for ASGI on asyncio and uvloop
(the `kind` fixture).  Servers are shared per (app, flags) for the whole module; tests
that stop their server start their own.

Apps report through the response, or through files in $CORSAC_H2_DIR (the progress of
/slow-stream, the http.disconnect marker of /wait)."""
import hashlib
import itertools
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import hpack
import httpx
import pytest
from hyperframe.frame import (ContinuationFrame, DataFrame, Frame, GoAwayFrame, HeadersFrame,
                              PingFrame, RstStreamFrame, SettingsFrame, WindowUpdateFrame)

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent / "apps"))
from conftest import Server, exchange, read_until_close, status_of  # noqa: E402
from h2_apps import payload  # noqa: E402

pytestmark = pytest.mark.timeout(30)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
TIMEOUT = 5
MiB = 1 << 20

WSGI = "h2_apps:wsgi_app"
ASGI = "h2_apps:asgi_app"
KINDS = {
    "wsgi": (WSGI, ()),
    "asgi-asyncio": (ASGI, ("--loop", "asyncio")),
    "asgi-uvloop": (ASGI, ("--loop", "uvloop")),
}

# RFC 9113 settings and error codes
S_HEADER_TABLE_SIZE, S_ENABLE_PUSH, S_MAX_CONCURRENT_STREAMS = 0x1, 0x2, 0x3
S_INITIAL_WINDOW_SIZE, S_MAX_FRAME_SIZE, S_MAX_HEADER_LIST_SIZE = 0x4, 0x5, 0x6
NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x3
REFUSED_STREAM, CANCEL, ENHANCE_YOUR_CALM = 0x7, 0x8, 0xb
ERROR_NAMES = {0x0: "NO_ERROR", 0x1: "PROTOCOL_ERROR", 0x2: "INTERNAL_ERROR",
               0x3: "FLOW_CONTROL_ERROR", 0x4: "SETTINGS_TIMEOUT", 0x5: "STREAM_CLOSED",
               0x6: "FRAME_SIZE_ERROR", 0x7: "REFUSED_STREAM", 0x8: "CANCEL",
               0x9: "COMPRESSION_ERROR", 0xa: "CONNECT_ERROR", 0xb: "ENHANCE_YOUR_CALM",
               0xc: "INADEQUATE_SECURITY", 0xd: "HTTP_1_1_REQUIRED"}

_tags = itertools.count(1)


def new_tag(prefix="t"):
    return f"{prefix}{os.getpid()}x{next(_tags)}"


# --------------------------------------------------------------------------- process helpers

def children(ppid):
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                st = f.read().decode("latin-1")
        except OSError:
            continue
        rest = st[st.rindex(")") + 2:].split()
        if int(rest[1]) == ppid and rest[0] != "Z":
            out.append(int(d))
    return sorted(out)


def worker_pid(server, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kids = children(server.proc.pid)
        if len(kids) == 1:
            return kids[0]
        time.sleep(0.05)
    raise AssertionError(f"expected one worker under {server.proc.pid}: {children(server.proc.pid)}")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def wait_for(pred, timeout, step=0.02):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() >= deadline:
            return v
        time.sleep(step)


def read_text(path):
    try:
        return Path(path).read_text()
    except FileNotFoundError:
        return None


# --------------------------------------------------------------------------- raw frame client

class RStream:
    def __init__(self):
        self.blocks = []        # decoded header blocks: [[(name, value), ...], ...] (bytes)
        self.data = bytearray()
        self.data_frames = 0
        self.ended = False
        self.reset = None       # RST_STREAM error code

    @property
    def headers(self):
        return self.blocks[0] if self.blocks else []

    @property
    def status(self):
        for k, v in self.headers:
            if k == b":status":
                return int(v)
        return None

    def header(self, name):
        vals = [v for k, v in self.headers if k == name]
        return vals[-1] if vals else None

    @property
    def done(self):
        return self.ended or self.reset is not None

    def __repr__(self):
        return (f"<RStream blocks={self.blocks} data={bytes(self.data[:200])!r} "
                f"ended={self.ended} reset={self.reset}>")


class RawH2:
    """A deliberately small HTTP/2 client on a raw socket: builds frames with hyperframe,
    encodes/decodes header blocks with hpack, answers SETTINGS with ACK, records every frame
    it reads.  It does no flow control of its own beyond opening big windows (unless told
    otherwise), so it can send what a real client library would refuse to."""

    def __init__(self, server=None, *, sock=None, settings=None, preface=True, timeout=TIMEOUT,
                 rcvbuf=None, big_window=True, authority=None, scheme="http", auto_ack=True,
                 recv_size=262144, recv_nap=0.0):
        if sock is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            if rcvbuf:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.settimeout(timeout)
            sock.connect((server.host, server.port))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self.authority = authority or (f"{server.host}:{server.port}" if server else "localhost")
        self.scheme = scheme
        self.enc = hpack.Encoder()
        self.dec = hpack.Decoder()
        self.dec.max_header_list_size = 1 << 24
        self.dec.max_allowed_table_size = 1 << 16
        self.buf = bytearray()
        self.closed = False
        self.reset_by_peer = False
        self.frames = []
        self.server_settings = None
        self.settings_acked = False
        self.goaways = []       # (error_code, last_stream_id, debug data)
        self.streams = {}
        self.auto_ack = auto_ack
        self.recv_size, self.recv_nap = recv_size, recv_nap     # a slow reader, if asked
        self._hblock = None     # (stream id, bytearray, end_stream) while collecting CONTINUATION
        if preface:
            s = {S_INITIAL_WINDOW_SIZE: (1 << 31) - 1} if big_window else {}
            s.update(settings or {})
            out = PREFACE + SettingsFrame(0, settings=s).serialize()
            if big_window:
                out += WindowUpdateFrame(0, window_increment=(1 << 31) - 1 - 65535).serialize()
            self.sock.sendall(out)

    # --- sending
    def send(self, *frames):
        self.sock.sendall(b"".join(f if isinstance(f, (bytes, bytearray)) else f.serialize()
                                   for f in frames))

    def block(self, method, path, extra=(), authority=None):
        hs = [(":method", method), (":scheme", self.scheme),
              (":authority", authority or self.authority), (":path", path)]
        return self.enc.encode(hs + list(extra))

    def req(self, sid, method, path, extra=(), end_stream=True, authority=None):
        """A HEADERS frame (END_HEADERS) opening stream sid."""
        flags = ["END_HEADERS"] + (["END_STREAM"] if end_stream else [])
        self.streams.setdefault(sid, RStream())
        return HeadersFrame(sid, data=self.block(method, path, extra, authority), flags=flags)

    def request(self, sid, method, path, extra=(), body=None):
        frames = [self.req(sid, method, path, extra, end_stream=body is None)]
        if body is not None:
            for i in range(0, max(len(body), 1), 16384):
                frames.append(DataFrame(sid, data=body[i:i + 16384]))
            frames.append(DataFrame(sid, data=b"", flags=["END_STREAM"]))
        self.send(*frames)
        return self.streams[sid]

    # --- receiving
    def read_frame(self, timeout):
        """The next frame, or None at EOF; raises socket.timeout."""
        deadline = time.monotonic() + timeout
        while True:
            if len(self.buf) >= 9:
                length = int.from_bytes(self.buf[:3], "big")
                if len(self.buf) >= 9 + length:
                    f, _ = Frame.parse_frame_header(memoryview(bytes(self.buf[:9])))
                    f.parse_body(memoryview(bytes(self.buf[9:9 + length])))
                    del self.buf[:9 + length]
                    self._process(f)
                    return f
            if self.closed:
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout
            self.sock.settimeout(left)
            if self.recv_nap:
                time.sleep(self.recv_nap)
            try:
                b = self.sock.recv(self.recv_size)
            except ConnectionResetError:
                self.closed = self.reset_by_peer = True
                continue
            if not b:
                self.closed = True
                continue
            self.buf += b

    def _stream(self, sid):
        return self.streams.setdefault(sid, RStream())

    def _process(self, f):
        self.frames.append(f)
        t = f.type
        if t == SettingsFrame.type:
            if "ACK" in f.flags:
                self.settings_acked = True
            else:
                if self.server_settings is None:
                    self.server_settings = dict(f.settings)
                else:
                    self.server_settings.update(f.settings)
                if self.auto_ack:
                    self._try_send(SettingsFrame(0, flags=["ACK"]))
        elif t == PingFrame.type:
            if "ACK" not in f.flags and self.auto_ack:
                self._try_send(PingFrame(0, opaque_data=f.opaque_data, flags=["ACK"]))
        elif t == GoAwayFrame.type:
            self.goaways.append((f.error_code, f.last_stream_id, f.additional_data))
        elif t == RstStreamFrame.type:
            self._stream(f.stream_id).reset = f.error_code
        elif t == DataFrame.type:
            st = self._stream(f.stream_id)
            st.data += f.data
            st.data_frames += 1
            if "END_STREAM" in f.flags:
                st.ended = True
        elif t == HeadersFrame.type:
            self._hblock = (f.stream_id, bytearray(f.data), "END_STREAM" in f.flags)
            if "END_HEADERS" in f.flags:
                self._end_block()
        elif t == ContinuationFrame.type:
            assert self._hblock and self._hblock[0] == f.stream_id, f"stray CONTINUATION {f}"
            self._hblock[1].extend(f.data)
            if "END_HEADERS" in f.flags:
                self._end_block()

    def _end_block(self):
        sid, data, end = self._hblock
        self._hblock = None
        st = self._stream(sid)
        st.blocks.append([(bytes(k), bytes(v)) for k, v in self.dec.decode(bytes(data), raw=True)])
        if end:
            st.ended = True

    def _try_send(self, frame):
        try:
            self.sock.sendall(frame.serialize())
        except OSError:
            pass

    def run_until(self, pred, timeout=TIMEOUT):
        """Read frames until pred() is true, EOF or timeout; returns pred()."""
        deadline = time.monotonic() + timeout
        while not pred():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                if self.read_frame(left) is None:
                    break
            except socket.timeout:
                break
        return pred()

    def settle(self, timeout=TIMEOUT):
        """Wait for the server's SETTINGS and its ACK of ours."""
        assert self.run_until(lambda: self.server_settings is not None and self.settings_acked,
                              timeout), f"no SETTINGS exchange; frames={self.frames} closed={self.closed}"
        return self.server_settings

    def response(self, sid, timeout=TIMEOUT):
        st = self._stream(sid)
        self.run_until(lambda: st.done, timeout)
        return st

    def wait_closed(self, timeout=TIMEOUT):
        self.run_until(lambda: False, timeout)
        return self.closed

    def close(self):
        self.sock.close()


# --------------------------------------------------------------------------- h2-library client

class H2Resp:
    def __init__(self):
        self.headers = []
        self.trailers = []
        self.data = bytearray()
        self.ended = False
        self.reset = None

    @property
    def status(self):
        return int(dict(self.headers).get(b":status", b"0"))

    @property
    def done(self):
        return self.ended or self.reset is not None

    def json(self):
        return json.loads(bytes(self.data))

    def __repr__(self):
        return f"<H2Resp {self.headers} {bytes(self.data[:200])!r} ended={self.ended} reset={self.reset}>"


class H2Client:
    """The `h2` library's client state machine over a (TLS or plain) socket."""

    def __init__(self, sock, authority, scheme="http", settings=None, auto_ack=True,
                 validate=True):
        self.sock = sock
        self.authority = authority
        self.scheme = scheme
        cfg = h2.config.H2Configuration(client_side=True, header_encoding=None,
                                        validate_inbound_headers=validate)
        self.conn = h2.connection.H2Connection(config=cfg)
        if settings:
            init = {h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 100}
            init.update(settings)
            self.conn.local_settings = h2.settings.Settings(client=True, initial_values=init)
        self.conn.initiate_connection()
        self.auto_ack = auto_ack
        self.resp = {}
        self.pending = {}       # sid -> memoryview of body left to send
        self.sent = {}          # sid -> body bytes handed to the connection
        self.events = []
        self.terminated = None
        self.eof = False
        self.flush()

    @classmethod
    def connect(cls, server, **kw):
        s = server.connect(TIMEOUT)
        return cls(s, f"{server.host}:{server.port}", **kw)

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def start(self, method, path, headers=(), body=None, authority=None):
        sid = self.conn.get_next_available_stream_id()
        hs = [(b":method", method.encode()), (b":scheme", self.scheme.encode()),
              (b":authority", (authority or self.authority).encode()), (b":path", path.encode())]
        hs += [(k.encode() if isinstance(k, str) else k, v.encode() if isinstance(v, str) else v)
               for k, v in headers]
        self.conn.send_headers(sid, hs, end_stream=body is None)
        self.resp[sid] = H2Resp()
        self.sent[sid] = 0
        if body is not None:
            self.pending[sid] = memoryview(body)
        self._pump()
        self.flush()
        return sid

    def _pump(self):
        for sid, mv in list(self.pending.items()):
            if self.resp[sid].reset is not None:
                del self.pending[sid]
                continue
            while len(mv):
                n = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size,
                        len(mv))
                if n <= 0:
                    break
                self.conn.send_data(sid, mv[:n].tobytes())
                self.sent[sid] += n
                mv = mv[n:]
            if len(mv):
                self.pending[sid] = mv
            else:
                self.conn.end_stream(sid)
                del self.pending[sid]

    def step(self, timeout):
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(262144)
        except socket.timeout:
            return
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            return
        for ev in self.conn.receive_data(data):
            self.events.append(ev)
            if isinstance(ev, h2.events.ResponseReceived):
                self.resp[ev.stream_id].headers = list(ev.headers)
            elif isinstance(ev, h2.events.TrailersReceived):
                self.resp[ev.stream_id].trailers = list(ev.headers)
            elif isinstance(ev, h2.events.DataReceived):
                self.resp[ev.stream_id].data += ev.data
                if self.auto_ack and ev.flow_controlled_length:
                    self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                self.resp[ev.stream_id].ended = True
            elif isinstance(ev, h2.events.StreamReset):
                if ev.stream_id in self.resp:
                    self.resp[ev.stream_id].reset = ev.error_code
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.terminated = ev
        self._pump()
        self.flush()

    def run_until(self, pred, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        while not pred() and not self.eof:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.step(min(left, 0.2))
        return pred()

    def wait(self, sids, timeout=TIMEOUT):
        self.run_until(lambda: all(self.resp[s].done for s in sids), timeout)
        return [self.resp[s] for s in sids]

    def get(self, path, **kw):
        sid = self.start("GET", path, **kw)
        return self.wait([sid])[0]

    def close(self):
        try:
            self.conn.close_connection()
            self.flush()
        except Exception:
            pass
        self.sock.close()


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def h2dir(tmp_path_factory):
    return tmp_path_factory.mktemp("h2")


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    import trustme
    d = tmp_path_factory.mktemp("certs")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    chain, key, cafile = d / "chain.pem", d / "key.pem", d / "ca.pem"
    chain.write_bytes(b"".join(p.bytes() for p in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(cafile))
    return {"cert": str(chain), "key": str(key), "ca": str(cafile)}


@pytest.fixture(scope="module")
def pool(h2dir):
    made, dead = {}, []

    def get(app, *args):
        key = (app, args)
        s = made.get(key)
        if s is not None and s.proc.poll() is not None:
            dead.append(s)
            s = None
        if s is None:
            s = Server(app, args, env={"CORSAC_H2_DIR": str(h2dir)}, tmp_path=h2dir)
            made[key] = s
        return s
    yield get
    # stop them all at once; none has a client left, so each should be gone in well under 5 s
    live = [s for s in made.values() if s.proc.poll() is None]
    dead += [s for s in made.values() if s.proc.poll() is not None]
    for s in live:
        s.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 5
    slow = []
    for s in live:
        try:
            s.proc.wait(max(0.01, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            slow.append(f"{s.app} {s.args}\n{s.log()[-1200:]}")
            s.stop(signal.SIGQUIT, timeout=5)
        s.stop()
    assert not dead, "corsac died during the tests:\n" + "\n".join(
        f"{d.app} {d.args} rc={d.proc.returncode}\n{d.log()[-3000:]}" for d in dead)
    assert not slow, ("still running 5 s after SIGTERM, with no client connected "
                      "(a connection or stream the worker never let go of?):\n" + "\n".join(slow))


@pytest.fixture(params=list(KINDS))
def kind(request):
    return request.param


@pytest.fixture
def srv(pool, kind):
    """srv(*extra_args) -> the shared server of this kind (WSGI / ASGI asyncio / ASGI uvloop)."""
    app, args = KINDS[kind]

    def get(*extra):
        return pool(app, *args, *extra)
    return get


@pytest.fixture(params=["asyncio", "uvloop"])
def asgi(pool, request):
    """asgi(*extra_args) -> the shared ASGI server on this loop."""
    def get(*extra):
        return pool(ASGI, "--loop", request.param, *extra)
    return get


def tls_args(certs):
    return ("--ssl-certfile", certs["cert"], "--ssl-keyfile", certs["key"])


def https_url(s, path):
    return f"https://{s.host}:{s.port}{path}"


def tls_connect(server, certs, alpn=("h2", "http/1.1")):
    ctx = ssl.create_default_context(cafile=certs["ca"])
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    raw = server.connect(TIMEOUT)
    try:
        return ctx.wrap_socket(raw, server_hostname="127.0.0.1")
    except BaseException:
        raw.close()
        raise


def h1_get(sock, path, host="x"):
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    return read_until_close(sock, TIMEOUT)


def is_h2(kind):
    return "HTTP/2" if kind == "wsgi" else "2"


def proto_of(kind, info):
    return info["protocol"] if kind == "wsgi" else info["http_version"]


# --------------------------------------------------------------------------- clients: httpx, h2, curl, nghttp

def test_httpx_h2c_prior_knowledge(srv, kind):
    s = srv()
    with httpx.Client(http1=False, http2=True, timeout=TIMEOUT) as c:
        r = c.post(s.url + "/echo?x=1", content=b"hello h2c")
        assert r.status_code == 200 and r.http_version == "HTTP/2", r
        info = r.json()
        assert proto_of(kind, info) == is_h2(kind), info
        assert info["body"] == "hello h2c" and info["sha256"] == hashlib.sha256(b"hello h2c").hexdigest()
        assert info["method"] == "POST" and info["query"] == "x=1"
        assert info["scheme"] == "http"
        if kind == "wsgi":
            assert info["https"] is None
        else:
            assert "tls" not in info["extensions"], info["extensions"]
        # the connection is reused for a second request
        r2 = c.get(s.url + "/pid")
        assert r2.status_code == 200 and int(r2.text) == info["pid"]


def test_h2lib_h2c_authority_cookies_and_protocol(srv, kind):
    s = srv()
    c = H2Client.connect(s)
    try:
        r = c.get("/echo", authority="example.test:8443",
                  headers=[("cookie", "a=1"), ("cookie", "b=2"), ("cookie", "c=3"),
                           ("x-custom", "v")])
        assert r.status == 200, r
        info = r.json()
        assert proto_of(kind, info) == is_h2(kind), info
        if kind == "wsgi":
            assert info["host"] == "example.test:8443", info
            assert info["cookie"] == "a=1; b=2; c=3", info
            assert info["headers"]["x-custom"] == "v"
            assert not any(k.startswith(":") for k in info["headers"]), info["headers"]
        else:
            assert info["host"] == ["example.test:8443"], info
            assert info["cookie"] == ["a=1; b=2; c=3"], info
            assert ["x-custom", "v"] in info["headers"]
            assert not any(k.startswith(":") for k, _ in info["headers"]), info["headers"]
            assert all(k == k.lower() for k, _ in info["headers"]), info["headers"]
    finally:
        c.close()


def test_response_header_names_lowercase_and_no_connection_fields(srv, kind):
    s = srv()
    c = RawH2(s)
    try:
        c.settle()
        c.request(1, "GET", "/echo?conn=1")
        st = c.response(1)
        assert st.status == 200 and st.ended, st
        names = [k for k, _ in st.headers]
        assert all(k == k.lower() for k in names), names
        assert st.header(b"x-mixed-case") == b"Yes", st.headers
        if kind != "wsgi":
            assert st.header(b"x-upper-name") == b"1", st.headers
        for bad in (b"connection", b"keep-alive", b"transfer-encoding", b"upgrade",
                    b"proxy-connection"):
            assert bad not in names, (bad, st.headers)
        assert json.loads(bytes(st.data))["length"] == 0
        assert not c.goaways, c.goaways
    finally:
        c.close()


def test_http1_still_served_on_plaintext_port_with_http_auto(srv, kind):
    s = srv()
    data, _ = exchange(s, b"GET /echo HTTP/1.1\r\nHost: h1.test\r\nConnection: close\r\n\r\n")
    assert status_of(data) == 200, data[:300]
    info = json.loads(data.split(b"\r\n\r\n", 1)[1])
    if kind == "wsgi":
        assert info["protocol"] == "HTTP/1.1"
    else:
        assert info["http_version"] == "1.1"
    # and h2c on the very same port
    c = RawH2(s)
    try:
        c.settle()
        assert c.request(1, "GET", "/pid") and c.response(1).status == 200
    finally:
        c.close()


def test_curl_h2c_prior_knowledge(srv, kind, tmp_path):
    s = srv()
    out = tmp_path / "body"
    r = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "--max-time", "10",
                        "-o", str(out), "-w", "%{http_version} %{http_code}",
                        "--data-binary", "curl body", s.url + "/echo"],
                       capture_output=True, text=True, timeout=15)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "2 200", r.stdout
    info = json.loads(out.read_bytes())
    assert info["body"] == "curl body" and proto_of(kind, info) == is_h2(kind)


def test_nghttp_h2c(srv, kind):
    s = srv()
    r = subprocess.run(["nghttp", "-nv", "-t", "10", s.url + "/echo"],
                       capture_output=True, text=True, timeout=15)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr
    assert re.search(r":status: 200", r.stdout), r.stdout[-2000:]
    r = subprocess.run(["nghttp", "-nv", "-t", "10", "-m", "10", s.url + "/echo"],
                       capture_output=True, text=True, timeout=15)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr
    assert len(re.findall(r":status: 200", r.stdout)) == 10, r.stdout[-3000:]


# --------------------------------------------------------------------------- TLS: ALPN, httpx, curl, nghttp

def test_tls_h2_httpx(srv, kind, certs):
    s = srv(*tls_args(certs))
    ctx = ssl.create_default_context(cafile=certs["ca"])
    with httpx.Client(http2=True, verify=ctx, timeout=TIMEOUT) as c:
        r = c.post(https_url(s, "/echo"), content=b"over tls")
        assert r.status_code == 200 and r.http_version == "HTTP/2", r
        info = r.json()
        assert proto_of(kind, info) == is_h2(kind) and info["body"] == "over tls", info
        assert info["scheme"] == "https", info
        if kind == "wsgi":
            assert info["https"] == "on", info
        else:
            assert "tls" in info["extensions"], info["extensions"]
    # an HTTP/1.1-only client on the same TLS port
    with httpx.Client(http1=True, http2=False, verify=ctx, timeout=TIMEOUT) as c:
        r = c.get(https_url(s, "/echo"))
        assert r.status_code == 200 and r.http_version == "HTTP/1.1", r


def test_tls_alpn_auto(pool, certs):
    s = pool(WSGI, *tls_args(certs))
    t = tls_connect(s, certs, ("h2", "http/1.1"))
    try:
        assert t.selected_alpn_protocol() == "h2"
        c = H2Client(t, f"127.0.0.1:{s.port}", scheme="https")
        r = c.get("/echo")
        assert r.status == 200 and r.json()["protocol"] == "HTTP/2", r
    finally:
        t.close()
    t = tls_connect(s, certs, ("http/1.1",))
    try:
        assert t.selected_alpn_protocol() == "http/1.1"
        data = h1_get(t, "/echo")
        assert status_of(data) == 200 and b'"protocol": "HTTP/1.1"' in data, data[:300]
    finally:
        t.close()
    t = tls_connect(s, certs, None)          # no ALPN at all: HTTP/1.1
    try:
        assert t.selected_alpn_protocol() is None
        assert status_of(h1_get(t, "/echo")) == 200
    finally:
        t.close()


def test_tls_alpn_http1_only(pool, certs):
    s = pool(WSGI, *tls_args(certs), "--http", "1")
    t = tls_connect(s, certs, ("h2", "http/1.1"))
    try:
        assert t.selected_alpn_protocol() == "http/1.1"
        data = h1_get(t, "/echo")
        assert status_of(data) == 200 and b'"protocol": "HTTP/1.1"' in data, data[:300]
    finally:
        t.close()


def test_tls_alpn_http2_only(pool, certs):
    s = pool(WSGI, *tls_args(certs), "--http", "2")
    t = tls_connect(s, certs, ("h2", "http/1.1"))
    try:
        assert t.selected_alpn_protocol() == "h2"
        c = H2Client(t, f"127.0.0.1:{s.port}", scheme="https")
        assert c.get("/pid").status == 200
    finally:
        t.close()
    # a client that offers only http/1.1 is not served HTTP/1.1
    try:
        t = tls_connect(s, certs, ("http/1.1",))
    except (ssl.SSLError, OSError):
        return                                  # refused in the handshake (no_application_protocol)
    try:
        assert t.selected_alpn_protocol() != "http/1.1"
        data = h1_get(t, "/echo")
        assert status_of(data) != 200, data[:300]
    finally:
        t.close()


def test_tls_curl_http2(pool, certs, tmp_path):
    s = pool(ASGI, "--loop", "asyncio", *tls_args(certs))
    out = tmp_path / "body"
    r = subprocess.run(["curl", "-sS", "--http2", "--cacert", certs["ca"], "--max-time", "10",
                        "-o", str(out), "-w", "%{http_version} %{http_code}",
                        https_url(s, "/echo")], capture_output=True, text=True, timeout=15)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "2 200", r.stdout
    info = json.loads(out.read_bytes())
    assert info["http_version"] == "2" and info["scheme"] == "https", info


def test_tls_nghttp(pool, certs):
    s = pool(ASGI, "--loop", "asyncio", *tls_args(certs))
    r = subprocess.run(["nghttp", "-nv", "-t", "10", "-m", "10", https_url(s, "/echo")],
                       capture_output=True, text=True, timeout=15)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr
    assert "h2" in r.stdout and len(re.findall(r":status: 200", r.stdout)) == 10, r.stdout[-3000:]


# --------------------------------------------------------------------------- --http 1 / --http 2 on plaintext

def test_http1_only_does_not_speak_h2c(pool):
    s = pool(WSGI, "--http", "1")
    data, closed = exchange(s, PREFACE + SettingsFrame(0).serialize(), timeout=3)
    # no SETTINGS frame: either an HTTP/1.1 error response or just a close
    assert data == b"" or status_of(data) in (400, 505), data[:200]
    assert closed or data, "server neither answered nor closed"
    data, _ = exchange(s, b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status_of(data) == 200


def test_http2_only_does_not_serve_http1(pool):
    s = pool(WSGI, "--http", "2")
    data, closed = exchange(s, b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", timeout=3)
    assert b"HTTP/1.1 200" not in data, data[:300]
    assert status_of(data) == 505 or closed, (data[:300], closed)
    c = RawH2(s)
    try:
        c.settle()
        c.request(1, "GET", "/pid")
        assert c.response(1).status == 200
    finally:
        c.close()


# --------------------------------------------------------------------------- many streams, big bodies, flow control

def test_100_concurrent_streams(srv, kind):
    s = srv()
    c = H2Client.connect(s)
    try:
        bodies = {}
        for i in range(100):
            body = (f"stream {i};" * (i + 1)).encode()
            sid = c.start("POST", f"/echo?i={i}", body=body)
            bodies[sid] = (i, body)
        resps = c.wait(list(bodies), timeout=15)
        bad = [(sid, r) for sid, r in zip(bodies, resps) if not r.ended or r.status != 200]
        assert not bad, bad[:3]
        for sid, r in zip(bodies, resps):
            i, body = bodies[sid]
            info = r.json()
            assert info["query"] == f"i={i}" and info["length"] == len(body), (sid, info)
            assert info["sha256"] == hashlib.sha256(body).hexdigest(), sid
        assert c.terminated is None, c.terminated
    finally:
        c.close()


@pytest.mark.parametrize("window", [None, 65535], ids=["default-window", "window-65535"])
def test_8mb_upload_and_download_httpx(srv, window):
    s = srv(*(("--h2-initial-window-size", str(window)) if window else ()))
    body = os.urandom(8 * MiB)
    with httpx.Client(http1=False, http2=True, timeout=10) as c:
        r = c.post(s.url + "/upload", content=body)
        assert r.status_code == 200 and r.http_version == "HTTP/2", r
        info = r.json()
        assert info["length"] == len(body) and info["sha256"] == hashlib.sha256(body).hexdigest()
        # a streamed (no content-length) upload too
        r = c.post(s.url + "/upload", content=(body[i:i + 100_000] for i in range(0, len(body), 100_000)))
        assert r.status_code == 200 and r.json()["sha256"] == info["sha256"], r.text[:200]
        r = c.get(s.url + f"/big?n={8 * MiB}")
        assert r.status_code == 200 and len(r.content) == 8 * MiB
        assert hashlib.sha256(r.content).digest() == hashlib.sha256(payload(8 * MiB)).digest()


@pytest.mark.parametrize("window", [None, 65535], ids=["default-window", "window-65535"])
def test_8mb_both_ways_h2lib_small_client_window(srv, window):
    """h2 library with a 16 KiB receive window that it re-opens as it consumes; two uploads and
    two downloads on one connection at the same time."""
    s = srv(*(("--h2-initial-window-size", str(window)) if window else ()))
    c = H2Client.connect(s, settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 16384})
    try:
        up = os.urandom(8 * MiB)
        sids = [c.start("POST", "/upload", body=up), c.start("GET", f"/big?n={8 * MiB}"),
                c.start("POST", "/upload", body=up[::-1]), c.start("GET", f"/big?n={3 * MiB + 7}")]
        r1, r2, r3, r4 = c.wait(sids, timeout=25)
        assert r1.status == 200 and r1.json()["sha256"] == hashlib.sha256(up).hexdigest(), r1
        assert r3.status == 200 and r3.json()["sha256"] == hashlib.sha256(up[::-1]).hexdigest(), r3
        assert r2.status == 200 and r2.ended and bytes(r2.data) == payload(8 * MiB)
        assert r4.status == 200 and r4.ended and bytes(r4.data) == payload(3 * MiB + 7)
        if window:
            assert c.conn.remote_settings.initial_window_size == window
    finally:
        c.close()


def test_slow_reader_with_open_windows_gets_every_body(srv, kind):
    """Windows wide open (2^31-1, stream and connection) and the client never sends another
    frame: it only reads, slowly (16 KiB per recv), so the server's socket buffer fills and
    drains again and again.  Every 8 MiB body must arrive whole without the client having to
    poke the server (no WINDOW_UPDATE, no PING)."""
    s = srv()
    c = RawH2(s, recv_size=16384, recv_nap=0.0002)
    try:
        c.settle()
        for i in range(4):
            sid = 1 + 2 * i
            sent_before = len(c.frames)
            c.request(sid, "GET", f"/big?n={8 * MiB}")
            st = c.response(sid, timeout=5)
            assert st.ended and len(st.data) == 8 * MiB, \
                (f"request {i}: body stalled at {len(st.data)} of {8 * MiB} bytes "
                 f"({len(c.frames) - sent_before} frames read), windows open, socket writable")
            assert bytes(st.data) == payload(8 * MiB)
            st.data = bytearray()
    finally:
        c.close()


def test_server_settings_defaults(pool):
    s = pool(ASGI, "--loop", "asyncio")
    c = RawH2(s)
    try:
        st = c.settle()
        assert st.get(S_MAX_CONCURRENT_STREAMS) == 128, st
        assert st.get(S_INITIAL_WINDOW_SIZE) == 1048576, st
        assert st.get(S_MAX_HEADER_LIST_SIZE) == 65536, st
    finally:
        c.close()


def test_upload_window_opens_only_as_the_app_reads(pool):
    """--h2-initial-window-size 65535: while the app sleeps before reading, the client can
    send no more than the window; once the app reads, the rest flows."""
    s = pool(ASGI, "--loop", "asyncio", "--h2-initial-window-size", "65535")
    c = H2Client.connect(s)
    try:
        body = os.urandom(2 * MiB)
        sid = c.start("POST", "/upload?delay=1.2", body=body)
        c.run_until(lambda: False, 0.8)
        assert c.sent[sid] <= 65535, f"client could send {c.sent[sid]} bytes before the app read any"
        assert c.sent[sid] > 0
        r = c.wait([sid], timeout=10)[0]
        assert r.status == 200 and r.json()["length"] == len(body), r
        assert r.json()["sha256"] == hashlib.sha256(body).hexdigest()
    finally:
        c.close()


def test_client_that_grants_no_window_suspends_the_app(srv, kind, h2dir):
    """A client with a 16-byte stream window that never sends WINDOW_UPDATE asks for 128 MiB
    of /slow-stream: the app must stop early (its progress file stops growing) and the worker's
    memory stays bounded."""
    s = srv()
    pid = worker_pid(s)
    warm = H2Client.connect(s)
    try:
        assert int(warm.get("/pid").data) == pid
    finally:
        warm.close()
    rss0 = rss_kib(pid)
    tag = new_tag("ss")
    prog = h2dir / f"progress-{tag}"
    end = h2dir / f"progress-{tag}-end"
    total = 128 * MiB
    c = H2Client.connect(s, settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 16},
                         auto_ack=False)
    try:
        sid = c.start("GET", f"/slow-stream?tag={tag}&total={total}&chunk=65536")
        c.run_until(lambda: c.resp[sid].headers, 3)
        assert c.resp[sid].status == 200, c.resp[sid]
        # wait until the progress stops moving for 0.6 s
        last, since = None, time.monotonic()
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            c.step(0.05)
            cur = read_text(prog)
            if cur != last:
                last, since = cur, time.monotonic()
            elif time.monotonic() - since >= 0.6:
                break
        progress = int(last or 0)
        assert time.monotonic() - since >= 0.6, f"app still producing: {progress} bytes"
        assert progress < 16 * MiB, f"app got {progress} of {total} bytes out with a closed window"
        assert len(c.resp[sid].data) <= 16, len(c.resp[sid].data)
        grown = rss_kib(pid) - rss0
        assert grown < 48 * 1024, f"worker RSS grew {grown} KiB"
        assert read_text(end) is None, read_text(end)
    finally:
        c.sock.close()
    # the client is gone: the suspended app is woken (raises, or runs to its end), not leaked
    assert wait_for(lambda: read_text(end), 5), "app still suspended 5 s after the client left"
    assert int(read_text(prog)) < 16 * MiB or "done" in read_text(end)
    c2 = H2Client.connect(s)
    try:
        r = c2.get("/pid")
        assert r.status == 200 and int(r.data) == pid
    finally:
        c2.close()


# --------------------------------------------------------------------------- RST_STREAM

@pytest.mark.parametrize("started", [False, True], ids=["before-start", "after-start"])
def test_rst_stream_gives_the_app_http_disconnect(asgi, h2dir, started):
    s = asgi()
    tag = new_tag("w")
    marker = h2dir / f"wait-{tag}"
    c = H2Client.connect(s)
    try:
        other = c.start("GET", "/sleep?s=0.6")
        sid = c.start("GET", f"/wait?tag={tag}" + ("&start=1" if started else ""))
        if started:
            assert c.run_until(lambda: bytes(c.resp[sid].data) == b"started", 3), c.resp[sid]
            assert c.resp[sid].status == 200
        else:
            c.run_until(lambda: False, 0.3)
        assert read_text(marker) is None, "app saw a disconnect before the reset"
        c.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
        c.flush()
        assert wait_for(lambda: read_text(marker), 3) == "http.disconnect", read_text(marker)
        # the other stream on the connection is untouched, and new streams still work
        r = c.wait([other], timeout=3)[0]
        assert r.status == 200 and r.ended and bytes(r.data) == b"slept", r
        r = c.get("/echo")
        assert r.status == 200 and r.json()["http_version"] == "2"
        assert c.terminated is None
    finally:
        c.close()


def test_rst_one_stream_leaves_the_other_alone(srv, kind):
    s = srv()
    c = H2Client.connect(s, settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 16384},
                         auto_ack=False)
    try:
        # stream A: a big download that stalls on the client window; stream B: an upload
        a = c.start("GET", f"/big?n={4 * MiB}")
        c.run_until(lambda: c.resp[a].headers, 3)
        assert c.resp[a].status == 200
        body = os.urandom(300_000)
        b = c.start("POST", "/upload", body=body)
        c.conn.reset_stream(a, h2.errors.ErrorCodes.CANCEL)
        c.flush()
        c.auto_ack = True
        # give back the connection window that stream A used
        used = len(c.resp[a].data)
        if used:
            c.conn.increment_flow_control_window(used)
            c.flush()
        r = c.wait([b], timeout=5)[0]
        assert r.status == 200 and r.json()["sha256"] == hashlib.sha256(body).hexdigest(), r
        assert c.resp[a].reset is None and not c.resp[a].ended
        assert c.terminated is None
        r = c.get("/pid")
        assert r.status == 200
    finally:
        c.close()


# --------------------------------------------------------------------------- limits

@pytest.mark.parametrize("acked", [True, False], ids=["after-settings-ack", "before-settings-ack"])
def test_max_concurrent_streams_refuses_the_fifth(pool, acked):
    s = pool(ASGI, "--loop", "asyncio", "--h2-max-concurrent-streams", "4")
    c = RawH2(s)
    try:
        if acked:
            st = c.settle()
            assert st.get(S_MAX_CONCURRENT_STREAMS) == 4, st
        # five streams at once, the first four busy for 1 s
        c.send(*[c.req(sid, "GET", "/sleep?s=1") for sid in (1, 3, 5, 7, 9)])
        if acked:
            # Once the client has acknowledged the limit, libnghttp2 treats a stream past it
            # as a connection error, GOAWAY(PROTOCOL_ERROR) naming stream 7 as the last one
            # processed; RFC 9113 section 5.4.1 lets any stream error be handled that way.
            # The connection must then be closed, and a new one served.
            assert c.run_until(lambda: c.goaways, 3), (c.streams[9], c.goaways)
            assert c.goaways[-1][0] == PROTOCOL_ERROR and c.goaways[-1][1] == 7, c.goaways
            assert c.run_until(lambda: c.closed, 3), "connection left open after its GOAWAY"
            c.close()
            c = RawH2(s)
            c.settle()
            c.send(c.req(1, "GET", "/pid"))
            assert c.response(1).status == 200, (c.streams[1], c.goaways)
            return
        assert c.run_until(lambda: c.streams[9].done, 3), (c.streams[9], c.goaways)
        assert c.streams[9].reset == REFUSED_STREAM and c.streams[9].status is None, \
            (c.streams[9], c.goaways)
        assert not c.goaways, f"connection ended instead of refusing the stream: {c.goaways}"
        assert c.run_until(lambda: all(c.streams[i].done for i in (1, 3, 5, 7)), 4)
        for i in (1, 3, 5, 7):
            assert c.streams[i].status == 200 and bytes(c.streams[i].data) == b"slept", c.streams[i]
        if not acked:
            assert c.server_settings.get(S_MAX_CONCURRENT_STREAMS) == 4, c.server_settings
        c.send(c.req(11, "GET", "/pid"))
        assert c.response(11).status == 200, (c.streams[11], c.goaways)
    finally:
        c.close()


def test_connection_error_with_a_stream_in_flight_closes_the_connection(corsac, kind, h2dir):
    """A connection error (WINDOW_UPDATE with increment 0 on stream 0, PROTOCOL_ERROR) while a
    response is in flight (a /big download held up by a 1 KiB client window): GOAWAY, then the
    connection is closed; and the worker holds on to nothing, so SIGTERM stops it at once."""
    app, args = KINDS[kind]
    s = corsac(app, *args, env={"CORSAC_H2_DIR": str(h2dir)})
    c = RawH2(s, big_window=False, settings={S_INITIAL_WINDOW_SIZE: 1024})
    try:
        c.settle()
        c.request(1, "GET", f"/big?n={4 * MiB}")
        assert c.run_until(lambda: len(c.streams[1].data) == 1024, 3), c.streams[1]
        c.send(WindowUpdateFrame(0, window_increment=1).serialize()[:9] + b"\x00\x00\x00\x00")
        t0 = time.monotonic()
        assert c.run_until(lambda: c.goaways, 2), "no GOAWAY for a zero WINDOW_UPDATE"
        assert c.goaways[-1][0] == PROTOCOL_ERROR, c.goaways
        c.run_until(lambda: c.closed, 3)
        assert c.closed, (f"connection still open {time.monotonic() - t0:.1f} s after "
                          f"GOAWAY {c.goaways} (stream 1 was in flight)")
    finally:
        c.close()
        if sys.exc_info()[0] is not None:
            s.stop(signal.SIGQUIT, timeout=5)
    time.sleep(0.3)
    t0 = time.monotonic()
    s.proc.send_signal(signal.SIGTERM)
    try:
        rc = s.proc.wait(5)
    except subprocess.TimeoutExpired:
        rc = None
        s.stop(signal.SIGQUIT, timeout=5)       # fast stop, not the 30 s graceful wait
    assert rc == 0, (f"worker still finishing 'in-flight' work {time.monotonic() - t0:.1f} s after "
                     f"SIGTERM although its only client is gone:\n{s.log()[-1500:]}")


def test_max_header_list_size(pool):
    s = pool(ASGI, "--loop", "asyncio", "--h2-max-header-list-size", "4096")
    c = RawH2(s)
    try:
        st = c.settle()
        assert st.get(S_MAX_HEADER_LIST_SIZE) == 4096, st
        c.send(c.req(1, "GET", "/echo", [("x-big", "a" * 8000)]))
        r = c.response(1, timeout=3)
        assert r.status == 431 or (r.reset is not None and r.status is None), (r, c.goaways)
        # a header block within the limit, on the same connection, is served
        c.send(c.req(3, "GET", "/echo", [("x-small", "b" * 1000)]))
        r = c.response(3, timeout=3)
        assert r.status == 200 and r.ended, (r, c.goaways)
        assert not c.goaways, c.goaways
    finally:
        c.close()


def test_idle_connection_gets_goaway_after_keep_alive(pool):
    s = pool(ASGI, "--loop", "asyncio", "--timeout-keep-alive", "1")
    c = RawH2(s)
    try:
        c.settle()
        c.request(1, "GET", "/pid")
        assert c.response(1).status == 200
        t0 = time.monotonic()
        assert c.wait_closed(5), "idle h2 connection not closed"
        took = time.monotonic() - t0
        assert 0.5 < took < 4, took
        assert c.goaways and c.goaways[-1][0] == NO_ERROR, c.goaways
    finally:
        c.close()


# --------------------------------------------------------------------------- responses without DATA, trailers

def test_head_204_304_carry_no_data(srv, kind):
    s = srv()
    c = RawH2(s)
    try:
        c.settle()
        c.request(1, "HEAD", "/big?n=100000")
        c.request(3, "GET", "/status?code=204")
        c.request(5, "GET", "/status?code=304")
        c.request(7, "HEAD", "/echo")
        assert c.run_until(lambda: all(c.streams[i].done for i in (1, 3, 5, 7)), 5)
        for sid, code in ((1, 200), (3, 204), (5, 304), (7, 200)):
            st = c.streams[sid]
            assert st.status == code and st.ended and st.reset is None, (sid, st)
            assert len(st.data) == 0, (sid, st)
        assert c.streams[1].header(b"content-length") == b"100000", c.streams[1].headers
    finally:
        c.close()


def test_asgi_trailers_over_h2(asgi):
    s = asgi()
    c = RawH2(s)
    try:
        c.settle()
        c.request(1, "GET", "/trailers", [("te", "trailers")])
        st = c.response(1)
        assert st.status == 200 and st.ended, st
        assert st.header(b"x-trailers-ext") == b"yes", "http.response.trailers not offered over h2"
        assert bytes(st.data) == b"part one;part two;"
        assert len(st.blocks) == 2, st.blocks
        assert st.blocks[1] == [(b"x-checksum", b"abc123"), (b"x-count", b"2")], st.blocks
        # END_STREAM is on the trailers' HEADERS frame, not on a DATA frame
        frames = [f for f in c.frames if f.stream_id == 1]
        assert isinstance(frames[-1], (HeadersFrame, ContinuationFrame)), frames
        assert not any("END_STREAM" in f.flags for f in frames if isinstance(f, DataFrame))
    finally:
        c.close()


# --------------------------------------------------------------------------- graceful stop

def test_goaway_on_graceful_stop(corsac, kind, h2dir):
    app, args = KINDS[kind]
    s = corsac(app, *args, env={"CORSAC_H2_DIR": str(h2dir)})
    c = RawH2(s)
    try:
        c.settle()
        c.request(1, "GET", "/sleep?s=1")
        time.sleep(0.25)
        s.proc.send_signal(signal.SIGTERM)
        assert c.run_until(lambda: c.goaways or c.streams[1].done, 3), "no GOAWAY, no response"
        if kind != "wsgi":
            # the app sleeps in its loop: the GOAWAY comes first, the answer after
            assert c.goaways and not c.streams[1].done, (c.goaways, c.streams[1])
        assert c.run_until(lambda: c.goaways, 3), "no GOAWAY on graceful stop"
        assert all(g[0] == NO_ERROR for g in c.goaways), c.goaways
        # once the final GOAWAY (last stream id 1) is in, a new stream is not served
        c.run_until(lambda: c.goaways[-1][1] < 3 or c.streams[1].done, 1)
        sent3 = False
        if c.goaways[-1][1] < 3 and not c.closed:
            try:
                c.send(c.req(3, "GET", "/pid"))
                sent3 = True
            except OSError:
                pass
        assert c.run_until(lambda: c.streams[1].done, 3), c.streams[1]
        assert c.streams[1].status == 200 and bytes(c.streams[1].data) == b"slept", c.streams[1]
        assert c.goaways[-1][1] >= 1, c.goaways
        assert c.wait_closed(5), "connection still open after the last stream finished"
        if sent3:
            assert c.streams[3].status is None, c.streams[3]
    finally:
        c.close()
    assert s.proc.wait(10) == 0, s.log()[-2000:]
