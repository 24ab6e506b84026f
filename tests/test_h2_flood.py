"""HTTP/2 flood attacks over h2c (raw sockets, frames built with hyperframe) against the
real `corsac` process: rapid reset, CONTINUATION, PING, SETTINGS, empty DATA,
WINDOW_UPDATE and PRIORITY floods.

Each test floods one connection, then expects the server to send GOAWAY and/or close that
connection within a few seconds, and a fresh connection to be served normally by the same
worker process afterwards.  The GOAWAY code each flood got is printed (`-s` shows it) and
attached to the test report as the `goaway` user property.

One ASGI server (asyncio, one worker) serves the whole module: the worker has to survive
every flood in turn."""
import itertools
import sys
import threading
import time
from pathlib import Path

import pytest
from hyperframe.frame import (ContinuationFrame, DataFrame, HeadersFrame, PingFrame,
                              PriorityFrame, RstStreamFrame, SettingsFrame, WindowUpdateFrame)

sys.path.insert(0, str(Path(__file__).parent))
from conftest import Server  # noqa: E402
from test_h2 import (ENHANCE_YOUR_CALM, ERROR_NAMES, PROTOCOL_ERROR, S_HEADER_TABLE_SIZE,  # noqa: E402
                     RawH2, children, worker_pid)

pytestmark = pytest.mark.timeout(20)

CLOSE_WITHIN = 4.0      # seconds the server has to end a flooded connection
SEND_BUDGET = 4.0       # seconds the flooder may spend writing


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = tmp_path_factory.mktemp("h2flood")
    s = Server("h2_apps:asgi_app", ["--loop", "asyncio"], env={"CORSAC_H2_DIR": str(d)},
               tmp_path=d)
    yield s
    alive = s.proc.poll() is None
    s.stop()
    assert alive, f"corsac died during the flood tests:\n{s.log()[-3000:]}"


def pid_over_h2(server):
    """GET /pid on a new h2c connection; returns the pid the app reported."""
    c = RawH2(server)
    try:
        c.settle()
        c.request(1, "GET", "/pid")
        st = c.response(1, timeout=5)
        assert st.status == 200 and st.ended, (st, c.goaways, c.closed)
        return int(bytes(st.data))
    finally:
        c.close()


def flood_conn(server, **kw):
    """A settled h2c connection that no longer answers SETTINGS/PING by itself, so the
    flooding thread is its only writer."""
    c = RawH2(server, **kw)
    c.settle()
    c.auto_ack = False
    return c


class Flood:
    """Write `chunks` (an iterable of bytes) on the connection from a thread for at most
    SEND_BUDGET seconds, while (optionally) the main thread reads; records how far it got."""

    def __init__(self, conn, chunks):
        self.conn = conn
        self.chunks = chunks
        self.sent = 0
        self.error = None
        self.stopped = threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        deadline = time.monotonic() + SEND_BUDGET
        try:
            for b in self.chunks:
                if self.stopped.is_set() or time.monotonic() > deadline:
                    break
                self.conn.sock.sendall(b)
                self.sent += len(b)
        except OSError as e:          # the server closed / reset the connection, or timeout
            self.error = e

    def start(self):
        self.t.start()
        return self

    def join(self):
        self.t.join(SEND_BUDGET + 2)
        self.stopped.set()


def verdict(server, c, flood, name, record_property, worker_before, t0):
    """Read until the server closes (at most CLOSE_WITHIN s after the flood ended), then
    check the outcome and that a new connection is served by the same worker."""
    c.run_until(lambda: False, max(0.1, t0 + SEND_BUDGET + CLOSE_WITHIN - time.monotonic()))
    flood.join()
    took = time.monotonic() - t0
    codes = [ERROR_NAMES.get(g[0], hex(g[0])) for g in c.goaways]
    outcome = (f"{name}: goaway={codes or None} closed={c.closed} reset={c.reset_by_peer} "
               f"after {took:.2f}s; flooder wrote {flood.sent} bytes "
               f"({type(flood.error).__name__ if flood.error else 'no error'})")
    print("\n" + outcome)
    record_property("goaway", outcome)
    c.close()
    assert c.goaways or c.closed, f"server neither sent GOAWAY nor closed: {outcome}"
    assert c.closed, f"server did not close the flooded connection: {outcome}"
    for code, _, _ in c.goaways:
        assert code != 0, f"flood ended with GOAWAY NO_ERROR: {outcome}"
    assert server.proc.poll() is None, server.log()[-2000:]
    assert worker_pid(server) == worker_before, (children(server.proc.pid), server.log()[-2000:])
    assert pid_over_h2(server) == worker_before
    return outcome


@pytest.fixture
def before(server):
    """The worker pid, checked to be the one answering h2 requests before the flood."""
    pid = worker_pid(server)
    assert pid_over_h2(server) == pid
    return pid


def _hdr(c, sid, path="/pid", end_stream=True, end_headers=True, method="GET"):
    flags = (["END_HEADERS"] if end_headers else []) + (["END_STREAM"] if end_stream else [])
    return HeadersFrame(sid, data=c.block(method, path), flags=flags).serialize()


def _batched(gen, size=64 * 1024):
    buf = bytearray()
    for b in gen:
        buf += b
        if len(buf) >= size:
            yield bytes(buf)
            buf.clear()
    if buf:
        yield bytes(buf)


# --------------------------------------------------------------------------- the floods
# Each generator yields the flood's frames (serialized) for connection c.

def gen_rapid_reset(c):
    """CVE-2023-44487: HEADERS immediately followed by RST_STREAM(CANCEL), stream after stream."""
    for i in range(20000):
        sid = 1 + 2 * i
        yield _hdr(c, sid) + RstStreamFrame(sid, error_code=0x8).serialize()


def gen_continuation(c):
    """CVE-2024-27983: HEADERS without END_HEADERS, then CONTINUATION frames that never end
    the block (each carries a literal header field)."""
    piece = c.enc.encode([("x-flood", "v" * 200)], huffman=False)
    yield _hdr(c, 1, end_headers=False)
    cont = ContinuationFrame(1, data=piece).serialize()
    for _ in range(200000):
        yield cont


def gen_ping(c):
    """CVE-2019-9512: PINGs, each wanting an ACK."""
    ping = PingFrame(0, opaque_data=b"12345678").serialize()
    for _ in range(200000):
        yield ping


def gen_settings(c):
    """CVE-2019-9515: SETTINGS frames, each wanting an ACK."""
    st = SettingsFrame(0, settings={S_HEADER_TABLE_SIZE: 4096}).serialize()
    for _ in range(200000):
        yield st


def gen_empty_data(c):
    """CVE-2019-9518: a POST whose body is empty DATA frames (no END_STREAM)."""
    yield _hdr(c, 1, path="/upload", method="POST", end_stream=False)
    empty = DataFrame(1, data=b"").serialize()
    for _ in range(200000):
        yield empty


def gen_window_update(c):
    """Connection-level WINDOW_UPDATEs of 1 byte each (the window never overflows: the
    connection was opened without the big window increment)."""
    wu = WindowUpdateFrame(0, window_increment=1).serialize()
    for _ in range(200000):
        yield wu


def gen_priority(c):
    """CVE-2019-9513 style: PRIORITY frames on idle streams, each re-parented onto the
    previous one."""
    for i in range(200000):
        sid = 1 + 2 * i
        yield PriorityFrame(sid, depends_on=max(0, sid - 2), stream_weight=15,
                            exclusive=bool(i & 1)).serialize()


# name -> (generator, RawH2 options, whether the client reads while it floods)
FLOODS = {
    "rapid-reset": (gen_rapid_reset, {}, True),
    "continuation-flood": (gen_continuation, {}, True),
    "ping-flood": (gen_ping, {"rcvbuf": 4096}, False),
    "settings-flood": (gen_settings, {"rcvbuf": 4096}, False),
    "empty-data-flood": (gen_empty_data, {}, True),
    "window-update-flood": (gen_window_update, {"big_window": False}, True),
    "priority-flood": (gen_priority, {}, True),
}


def run_flood(server, name, record_property, before):
    gen, opts, read_while = FLOODS[name]
    c = flood_conn(server, **opts)
    t0 = time.monotonic()
    f = Flood(c, _batched(gen(c))).start()
    if not read_while:
        f.join()                    # nothing is read until the flooder is done
    return verdict(server, c, f, name, record_property, before, t0)


def test_rapid_reset(server, before, record_property):
    run_flood(server, "rapid-reset", record_property, before)


def test_continuation_flood(server, before, record_property):
    run_flood(server, "continuation-flood", record_property, before)


def test_ping_flood(server, before, record_property):
    """PINGs with a 4 KiB receive buffer, never reading the ACKs while flooding."""
    run_flood(server, "ping-flood", record_property, before)


def test_settings_flood(server, before, record_property):
    """SETTINGS with a 4 KiB receive buffer, never reading the ACKs while flooding."""
    run_flood(server, "settings-flood", record_property, before)


def test_empty_data_flood(server, before, record_property):
    run_flood(server, "empty-data-flood", record_property, before)


def test_window_update_flood(server, before, record_property):
    run_flood(server, "window-update-flood", record_property, before)


def test_priority_flood(server, before, record_property):
    run_flood(server, "priority-flood", record_property, before)


@pytest.mark.parametrize("name", list(FLOODS))
def test_flood_is_answered_with_a_goaway_frame(server, before, name):
    """The contract: a flood gets GOAWAY (ENHANCE_YOUR_CALM, or PROTOCOL_ERROR for invalid
    frames), then the close.  Here the client floods in small bursts and reads between them,
    and stops writing as soon as anything ends the connection, so the server has read nearly
    everything when it closes and a GOAWAY it wrote cannot be lost to a TCP reset."""
    gen, opts, _ = FLOODS[name]
    opts = {k: v for k, v in opts.items() if k != "rcvbuf"}
    c = flood_conn(server, **opts)
    frames = gen(c)
    deadline = time.monotonic() + SEND_BUDGET
    sent = 0
    try:
        while not (c.goaways or c.closed) and time.monotonic() < deadline:
            burst = b"".join(itertools.islice(frames, 32))
            if not burst:
                break
            try:
                c.sock.sendall(burst)
            except OSError:
                break
            sent += len(burst)
            c.run_until(lambda: c.goaways or c.closed, 0.001)
        c.run_until(lambda: c.closed, CLOSE_WITHIN)
        codes = [ERROR_NAMES.get(g[0], hex(g[0])) for g in c.goaways]
        outcome = f"{name}: goaway={codes or None} closed={c.closed} reset={c.reset_by_peer} sent={sent}"
        print("\n" + outcome)
        assert c.closed, outcome
        assert c.goaways, f"closed without a GOAWAY frame: {outcome}"
        assert c.goaways[-1][0] in (ENHANCE_YOUR_CALM, PROTOCOL_ERROR), outcome
    finally:
        c.close()
    assert pid_over_h2(server) == before
