"""Shared fixtures: start the real `corsac` process on a free loopback port.

Every server is started with `--bind 127.0.0.1:0`; the port is read back from
the "Listening at: http://HOST:PORT" line Corsac logs on stderr.  Servers are
always stopped (TERM, then KILL) when the test ends."""
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

APPS = Path(__file__).parent / "apps"
LISTEN_RE = re.compile(r"Listening at: https?://(\[[^\]]+\]|[^:\s]+):(\d+)")


class Server:
    def __init__(self, app, args=(), env=None, app_dir=APPS, tmp_path=None, wait=True):
        self.app = app
        self.args = list(args)
        self.logpath = Path(tmp_path or "/tmp") / f"corsac-{os.getpid()}-{id(self)}.log"
        self.env = dict(os.environ)
        # one worker unless the test asks for more: most tests are about one
        # worker's behaviour, and its default is the CPU count
        self.env.setdefault("CORSAC_WORKERS", "1")
        self.env.update(env or {})
        self.cmd = [sys.executable, "-m", "corsac"]
        if app is not None:
            self.cmd.append(app)
        if app_dir is not None:
            self.cmd += ["--app-dir", str(app_dir)]
        if not any(a in ("-b", "--bind") or a.startswith("--bind=") for a in self.args):
            self.cmd += ["--bind", "127.0.0.1:0"]
        self.cmd += self.args
        self._log = open(self.logpath, "wb")
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=self.env)
        self.host, self.port = "127.0.0.1", None
        if wait:
            self.wait_listening()

    def log(self):
        if not self._log.closed:
            self._log.flush()
        return self.logpath.read_text(errors="replace")

    def wait_listening(self, timeout=15):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = LISTEN_RE.search(self.log())
            if m:
                self.host, self.port = m.group(1).strip("[]"), int(m.group(2))
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"corsac exited {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.02)
        raise RuntimeError(f"corsac did not start listening:\n{self.log()}")

    @property
    def url(self):
        return f"http://{self.host}:{self.port}"

    def connect(self, timeout=5):
        s = socket.create_connection((self.host, self.port), timeout=timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s

    def raw(self, data, timeout=5, shut=False):
        """Send raw bytes, return everything read until the server closes (or timeout)."""
        s = self.connect(timeout)
        try:
            s.sendall(data)
            if shut:
                s.shutdown(socket.SHUT_WR)
            return read_until_close(s, timeout)
        finally:
            s.close()

    def stop(self, sig=signal.SIGTERM, timeout=15):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode


def read_until_close(sock, timeout=5):
    """Read until EOF, reset or timeout; returns what arrived."""
    sock.settimeout(timeout)
    chunks = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            b = sock.recv(65536)
        except (socket.timeout, ConnectionResetError):
            break
        if not b:
            break
        chunks.append(b)
    return b"".join(chunks)


def exchange(server, data, timeout=3.0):
    """Send raw bytes on a new connection; read until the server closes or
    timeout.  Returns (bytes, closed): closed when the server ended the
    connection (EOF or reset) rather than the time running out."""
    s = server.connect(timeout)
    try:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        chunks, closed = [], False
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            s.settimeout(left)
            try:
                b = s.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                closed = True
                break
            if not b:
                closed = True
                break
            chunks.append(b)
        return b"".join(chunks), closed
    finally:
        s.close()


def status_of(response: bytes) -> int:
    """Status code of the first response in raw bytes (0 if none)."""
    m = re.match(rb"HTTP/1\.[01] (\d{3}) ", response)
    return int(m.group(1)) if m else 0


@pytest.fixture
def corsac(tmp_path):
    """Factory: corsac("module:attr", "--threads", "4", env={...}) -> running Server."""
    servers = []

    def start(app, *args, env=None, app_dir=APPS, wait=True):
        s = Server(app, args, env=env, app_dir=app_dir, tmp_path=tmp_path, wait=wait)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()
