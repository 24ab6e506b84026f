"""TLS on the real `corsac` process, with real clients (python ssl, http.client, httpx,
curl, openssl s_client, websockets).

Certificates come from trustme (ECDSA keys): one CA, a server certificate for 127.0.0.1
and localhost, a client certificate from the same CA, and a second CA with a client
certificate of its own.  Apps are in tests/apps/tls_apps.py: they answer with what they
saw as JSON (WSGI environ facts, ASGI scope facts with scope["extensions"]["tls"]).

Servers that many tests can share live for the whole module (`srv`); tests about start-up,
signals or timeouts start their own (`corsac`)."""
import hashlib
import http.client
import json
import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization

sys.path.insert(0, str(Path(__file__).parent))
from conftest import Server, exchange, read_until_close, status_of  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent / "apps"))
from tls_apps import payload  # noqa: E402

TIMEOUT = 5
pytestmark = pytest.mark.timeout(60)
LOOPS = ["asyncio", "uvloop"]
WSGI = "tls_apps:wsgi_app"
ASGI = "tls_apps:asgi_app"
BIG = 3 * 1024 * 1024 + 17
PLAIN_HTTP_BODY = b"plain HTTP request was sent to HTTPS port"


# --------------------------------------------------------------------------- certificates

class Certs:
    """Files and trustme objects of one test module."""

    def __init__(self, d):
        self.dir = d
        self.ca = trustme.CA()
        self.server = self.ca.issue_cert("127.0.0.1", "localhost", common_name="corsac server")
        self.client = self.ca.issue_cert("client.example.org", common_name="corsac test client")
        self.other_ca = trustme.CA()
        self.other_client = self.other_ca.issue_cert("client.example.org",
                                                     common_name="corsac test client")
        self.other_server = self.ca.issue_cert("127.0.0.1", "localhost",
                                               common_name="corsac other server")
        self.ca_pem = self._write("ca.pem", self.ca.cert_pem.bytes())
        self.other_ca_pem = self._write("other-ca.pem", self.other_ca.cert_pem.bytes())
        self.cert = self._write("server.pem", b"".join(b.bytes() for b in self.server.cert_chain_pems))
        self.key = self._write("server.key", self.server.private_key_pem.bytes())
        self.both = self._write("server-both.pem", self.server.private_key_and_cert_chain_pem.bytes())
        self.other_key = self._write("other.key", self.other_server.private_key_pem.bytes())
        self.password = "s3cret pass"
        key = serialization.load_pem_private_key(self.server.private_key_pem.bytes(), None)
        self.enc_key = self._write("server-enc.key", key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(self.password.encode())))

    def _write(self, name, data):
        p = self.dir / name
        p.write_bytes(data)
        return p

    def args(self, *extra):
        return ("--ssl-certfile", str(self.cert), "--ssl-keyfile", str(self.key)) + extra


def leaf_der(leaf):
    return ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())


def pem_der(pem):
    return ssl.PEM_cert_to_DER_cert(pem)


def subject_rfc4514(leaf):
    return x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()).subject.rfc4514_string()


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return Certs(tmp_path_factory.mktemp("tls-certs"))


# --------------------------------------------------------------------------- clients

def client_ctx(certs, max_version=None, min_version=None, alpn=None, cert=None, ciphers=None,
               trust=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    (trust or certs.ca).configure_trust(ctx)
    if min_version is not None:
        ctx.minimum_version = min_version
    if max_version is not None:
        ctx.maximum_version = max_version
    if alpn is not None:
        ctx.set_alpn_protocols(alpn)
    if cert is not None:
        cert.configure_cert(ctx)
    if ciphers is not None:
        ctx.set_ciphers(ciphers)
    return ctx


def iana_id(ctx, name):
    """IANA cipher suite id of an OpenSSL cipher name (from the client context's list)."""
    for c in ctx.get_ciphers():
        if c["name"] == name:
            return c["id"] & 0xFFFF
    raise AssertionError(f"cipher {name} not known to the client context")


def tls_connect(server, ctx, session=None, hostname="127.0.0.1", timeout=TIMEOUT):
    raw = socket.create_connection((server.host, server.port), timeout=timeout)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        return ctx.wrap_socket(raw, server_hostname=hostname, session=session)
    except BaseException:
        raw.close()
        raise


class Reply:
    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body

    def json(self):
        return json.loads(self.body)

    def header(self, name):
        return self.headers.get(name)

    def __repr__(self):
        return f"<Reply {self.status} {self.body[:300]!r}>"


def request_on(sock, server, method="GET", path="/", body=b"", headers=()):
    """One HTTP/1.1 request on an open (TLS) socket; the response is read in full."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{server.port}"]
    lines += [f"{k}: {v}" for k, v in headers]
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
    resp = http.client.HTTPResponse(sock, method=method)
    resp.begin()
    data = resp.read()
    return Reply(resp.status, resp.headers, data)


def https(server, ctx, method="GET", path="/", body=b"", headers=(), **kw):
    """A request on a new TLS connection; returns (Reply, the closed SSLSocket's facts)."""
    with tls_connect(server, ctx, **kw) as s:
        r = request_on(s, server, method, path, body, headers)
        r.version, r.cipher, r.alpn = s.version(), s.cipher(), s.selected_alpn_protocol()
        r.reused, r.session = s.session_reused, s.session
        r.peer_der = s.getpeercert(binary_form=True)
        return r


def attempt(server, ctx, **kw):
    """Handshake + one request; returns ("ok", Reply) or ("refused", exception/EOF note).

    With TLS 1.3 the server's verdict on a client certificate arrives after the client's
    handshake has finished, so a refusal may show up as the first read failing or EOF."""
    try:
        s = tls_connect(server, ctx, **kw)
    except (ssl.SSLError, ConnectionError, OSError) as e:
        return "refused", e
    try:
        try:
            s.sendall(f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n\r\n".encode())
            data = s.recv(65536)
        except (ssl.SSLError, ConnectionError, OSError) as e:
            return "refused", e
        if not data:
            return "refused", "EOF before any response"
        s.settimeout(TIMEOUT)
        resp = http.client.HTTPResponse(_Prefixed(s, data), method="GET")
        resp.begin()
        return "ok", Reply(resp.status, resp.headers, resp.read())
    finally:
        s.close()


class _Prefixed:
    """A socket-like object whose makefile() first yields bytes already read."""

    def __init__(self, sock, head):
        self.sock, self.head = sock, head

    def makefile(self, mode):
        import io

        sock, head = self.sock, [self.head]

        class Raw(io.RawIOBase):
            def readable(self):
                return True

            def readinto(self, b):
                if head[0]:
                    n = min(len(b), len(head[0]))
                    b[:n] = head[0][:n]
                    head[0] = head[0][n:]
                    return n
                data = sock.recv(len(b))
                b[:len(data)] = data
                return len(data)
        return io.BufferedReader(Raw())


def plain_pid(server, ctx):
    r = https(server, ctx)
    assert r.status == 200, r
    return r.json()["pid"]


def old_tls_ctx(certs, version):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx = client_ctx(certs, min_version=version, max_version=version)
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    return ctx


# --------------------------------------------------------------------------- servers

@pytest.fixture(scope="module")
def _pool(tmp_path_factory, certs):
    d = tmp_path_factory.mktemp("tls-servers")
    made, dead = {}, []

    def get(app, args, env=None):
        key = (app, tuple(args), tuple(sorted((env or {}).items())))
        s = made.get(key)
        if s is not None and s.proc.poll() is not None:
            dead.append(s)
            s = None
        if s is None:
            s = Server(app, args, env=env, tmp_path=d)
            made[key] = s
        return s
    yield get
    for s in made.values():
        if s.proc.poll() is not None:
            dead.append(s)
        s.stop()
    assert not dead, "corsac died during the tests:\n" + "\n".join(
        f"{s.app} {s.args} rc={s.proc.returncode}\n{s.log()[-3000:]}" for s in dead)


@pytest.fixture
def srv(_pool, certs):
    """srv(app, *extra_args, env=None): a module-shared TLS server (cert + key of `certs`)."""
    def get(app, *extra, env=None):
        return _pool(app, certs.args(*extra), env)
    return get


def asgi_args(loop, *extra):
    return ("--loop", loop) + extra


# --------------------------------------------------------------------------- basics

def test_wsgi_https_get_post(srv, certs):
    s = srv(WSGI)
    assert "Listening at: https://127.0.0.1:" in s.log()
    ctx = client_ctx(certs)
    r = https(s, ctx, path="/get")
    assert r.status == 200, r
    j = r.json()
    assert j["url_scheme"] == "https"
    assert j["HTTPS"] == "on"
    assert j["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert j["REQUEST_METHOD"] == "GET" and j["PATH_INFO"] == "/get"
    assert r.peer_der == leaf_der(certs.server)

    body = os.urandom(5000)
    r = https(s, ctx, "POST", "/post", body)
    j = r.json()
    assert j["REQUEST_METHOD"] == "POST"
    assert j["body_len"] == len(body) and j["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert j["url_scheme"] == "https" and j["HTTPS"] == "on"


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
def test_asgi_https_scope_and_tls_extension(srv, certs, loop, version):
    s = srv(ASGI, *asgi_args(loop))
    ctx = client_ctx(certs, max_version=getattr(ssl.TLSVersion, version))
    r = https(s, ctx, path="/scope")
    assert r.status == 200, r
    j = r.json()
    assert j["scheme"] == "https"
    assert j["http_version"] == "1.1"
    assert j["has_tls"], j
    tls = j["tls"]
    assert r.version == version.replace("_", ".")
    assert tls["tls_version"] == {"TLSv1_2": 0x0303, "TLSv1_3": 0x0304}[version]
    assert isinstance(tls["cipher_suite"], int)
    assert tls["cipher_suite"] == iana_id(ctx, r.cipher[0]), (tls, r.cipher)
    assert isinstance(tls["server_cert"], str) and "BEGIN CERTIFICATE" in tls["server_cert"]
    assert pem_der(tls["server_cert"]) == leaf_der(certs.server)
    assert tls["client_cert_chain"] == []
    assert tls["client_cert_name"] is None
    assert tls["client_cert_error"] is None

    body = random.Random(7).randbytes(70000)
    r = https(s, ctx, "POST", "/post", body)
    j = r.json()
    assert j["method"] == "POST" and j["scheme"] == "https"
    assert j["body_len"] == len(body) and j["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_asgi_plaintext_has_no_tls_extension(corsac):
    s = corsac(ASGI, "--loop", "asyncio")
    c = http.client.HTTPConnection(s.host, s.port, timeout=TIMEOUT)
    c.request("GET", "/")
    j = json.loads(c.getresponse().read())
    c.close()
    assert j["scheme"] == "http"
    assert not j["has_tls"], j


def test_curl_https(srv, certs, tmp_path):
    s = srv(WSGI)
    url = f"https://127.0.0.1:{s.port}/curl"
    out = subprocess.run(["curl", "-sS", "--max-time", "5", "--cacert", str(certs.ca_pem),
                          "--http1.1", "-w", "\n%{http_version} %{response_code}", url],
                         capture_output=True, timeout=10)
    assert out.returncode == 0, out.stderr
    body, _, tail = out.stdout.rpartition(b"\n")
    assert tail == b"1.1 200"
    j = json.loads(body)
    assert j["url_scheme"] == "https" and j["HTTPS"] == "on"
    # POST a file with curl, and curl refusing a server it does not trust
    f = tmp_path / "up.bin"
    f.write_bytes(os.urandom(200000))
    out = subprocess.run(["curl", "-sS", "--max-time", "5", "--cacert", str(certs.ca_pem),
                          "--data-binary", f"@{f}", url], capture_output=True, timeout=10)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["body_sha256"] == hashlib.sha256(f.read_bytes()).hexdigest()
    out = subprocess.run(["curl", "-sS", "--max-time", "5", "--cacert", str(certs.other_ca_pem),
                          url], capture_output=True, timeout=10)
    assert out.returncode == 60, (out.returncode, out.stderr)   # peer certificate not verified


# --------------------------------------------------------------------------- protocol versions

@pytest.mark.parametrize("version", ["TLSv1", "TLSv1_1"])
def test_old_tls_versions_refused(srv, certs, version):
    s = srv(WSGI)
    ctx = old_tls_ctx(certs, getattr(ssl.TLSVersion, version))
    with pytest.raises(ssl.SSLError) as ei:
        tls_connect(s, ctx).close()
    # the server's protocol_version alert, not the client refusing on its own
    assert "PROTOCOL_VERSION" in str(ei.value.reason) or "protocol version" in str(ei.value), ei.value
    r = https(s, client_ctx(certs))
    assert r.status == 200


def test_old_tls_refused_openssl_s_client(srv, certs):
    s = srv(WSGI)
    out = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{s.port}", "-tls1_1",
                          "-cipher", "DEFAULT:@SECLEVEL=0", "-CAfile", str(certs.ca_pem)],
                         input=b"", capture_output=True, timeout=10)
    assert out.returncode != 0
    assert b"alert protocol version" in out.stdout + out.stderr, out.stdout + out.stderr


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
def test_tls12_and_tls13_work(srv, certs, version):
    s = srv(WSGI)
    v = getattr(ssl.TLSVersion, version)
    r = https(s, client_ctx(certs, min_version=v, max_version=v))
    assert r.status == 200 and r.version == version.replace("_", ".")
    assert r.json()["url_scheme"] == "https"


@pytest.mark.parametrize("app", ["wsgi", "asyncio", "uvloop"])
def test_keep_alive_on_one_tls_connection(srv, certs, app):
    s = srv(WSGI) if app == "wsgi" else srv(ASGI, *asgi_args(app))
    c = http.client.HTTPSConnection(s.host, s.port, timeout=TIMEOUT, context=client_ctx(certs))
    try:
        pids, sock = set(), None
        for i in range(6):
            body = b"x" * (i * 1000)
            c.request("POST" if i % 2 else "GET", f"/ka{i}", body=body if i % 2 else None)
            resp = c.getresponse()
            j = json.loads(resp.read())
            assert resp.status == 200
            assert j["body_len"] == (len(body) if i % 2 else 0)
            pids.add(j["pid"])
            if sock is None:
                sock = c.sock
            assert c.sock is sock, "http.client had to reconnect: the TLS connection was not kept"
            assert resp.getheader("connection", "").lower() != "close"
        assert len(pids) == 1
    finally:
        c.close()


@pytest.mark.parametrize("app", ["wsgi", "asyncio", "uvloop"])
def test_big_upload_and_download(srv, certs, app):
    s = srv(WSGI) if app == "wsgi" else srv(ASGI, *asgi_args(app))
    ctx = client_ctx(certs)
    up = random.Random(3).randbytes(BIG)
    with tls_connect(s, ctx, timeout=20) as sock:
        r = request_on(sock, s, "POST", "/upload", up)
        assert r.status == 200
        j = r.json()
        assert j["body_len"] == BIG and j["body_sha256"] == hashlib.sha256(up).hexdigest()
        # the download on the same connection
        r = request_on(sock, s, "GET", f"/big?n={BIG}")
        assert r.status == 200
        assert len(r.body) == BIG
        digest = hashlib.sha256(r.body).hexdigest()
        assert digest == r.header("x-sha256") == hashlib.sha256(payload(BIG)).hexdigest()


def test_handshake_byte_by_byte(srv, certs):
    """A client whose handshake and request dribble in one byte per TCP segment."""
    s = srv(WSGI)
    ctx = client_ctx(certs)
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname="127.0.0.1")
    sock = s.connect(TIMEOUT)

    def flush():
        data = out.read()
        for i in range(len(data)):
            sock.sendall(data[i:i + 1])
            if i % 64 == 0:
                time.sleep(0.001)

    try:
        while True:
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                flush()
                b = sock.recv(65536)
                assert b, "server closed during the handshake"
                inc.write(b)
        flush()
        obj.write(f"GET /dribble HTTP/1.1\r\nHost: 127.0.0.1:{s.port}\r\n"
                  "Connection: close\r\n\r\n".encode())
        flush()
        got = b""
        while True:
            try:
                b = obj.read(65536)
                if not b:           # the server's close_notify
                    break
                got += b
                continue
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:
                break
            b = sock.recv(65536)
            if not b:
                break
            inc.write(b)
        assert status_of(got) == 200, got
        body = got.split(b"\r\n\r\n", 1)[1]
        assert json.loads(body)["PATH_INFO"] == "/dribble"
    finally:
        sock.close()


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
def test_request_after_handshake_finished_at_accept(srv, certs, version):
    """The handshake can end inside the worker's first step on a connection (its whole
    second flight is already there when the server looks after writing its own); the
    request that comes a moment later must still be read.

    The client and the worker share one CPU, which makes that order the common one (the
    client runs between the server's write and its next read)."""
    s = srv(WSGI)
    v = getattr(ssl.TLSVersion, version)
    ctx = client_ctx(certs, min_version=v, max_version=v)
    wpid = plain_pid(s, client_ctx(certs))
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one CPU: nothing to pin")
    cpu = min(os.sched_getaffinity(0))
    mine, theirs = os.sched_getaffinity(0), os.sched_getaffinity(wpid)
    os.sched_setaffinity(wpid, {cpu})
    os.sched_setaffinity(0, {cpu})
    try:
        for i in range(40):
            with tls_connect(s, ctx) as sock:
                sock.sendall(f"GET /n{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                sock.settimeout(2)
                try:
                    data = sock.recv(65536)
                except socket.timeout:
                    pytest.fail(f"{version}: connection {i}: no answer in 2 s to a request sent "
                                "right after the handshake")
                assert status_of(data) == 200, data
    finally:
        os.sched_setaffinity(0, mine)
        try:
            os.sched_setaffinity(wpid, theirs)
        except ProcessLookupError:
            pass


# --------------------------------------------------------------------------- ALPN

def test_alpn_auto_offers_h2(srv, certs):
    s = srv(ASGI, "--loop", "asyncio")
    with tls_connect(s, client_ctx(certs, alpn=["h2", "http/1.1"])) as sock:
        assert sock.selected_alpn_protocol() == "h2"
    out = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{s.port}",
                          "-alpn", "h2,http/1.1", "-CAfile", str(certs.ca_pem),
                          "-servername", "localhost"],
                         input=b"", capture_output=True, timeout=10)
    assert b"ALPN protocol: h2" in out.stdout, out.stdout[-2000:]
    assert b"Verify return code: 0 (ok)" in out.stdout
    out = subprocess.run(["curl", "-sS", "--max-time", "5", "--cacert", str(certs.ca_pem),
                          "--http2", "-w", "\n%{http_version}", f"https://127.0.0.1:{s.port}/c"],
                         capture_output=True, timeout=10)
    body, _, version = out.stdout.rpartition(b"\n")
    assert version == b"2", (out.stdout, out.stderr)
    assert json.loads(body)["http_version"] == "2"


def test_alpn_h2_request_with_httpx(srv, certs):
    import httpx
    s = srv(ASGI, "--loop", "asyncio")
    with httpx.Client(verify=client_ctx(certs), http2=True, timeout=TIMEOUT) as c:
        r = c.post(f"https://127.0.0.1:{s.port}/h2", content=b"abc" * 1000)
        assert r.status_code == 200
        assert r.http_version == "HTTP/2"
        j = r.json()
        assert j["http_version"] == "2"
        assert j["scheme"] == "https"
        assert j["has_tls"] and j["tls"]["tls_version"] == 0x0304
        assert j["body_sha256"] == hashlib.sha256(b"abc" * 1000).hexdigest()


def test_alpn_only_http11_offered(srv, certs):
    import httpx
    s = srv(ASGI, "--loop", "asyncio")
    r = https(s, client_ctx(certs, alpn=["http/1.1"]))
    assert r.alpn == "http/1.1" and r.status == 200
    assert r.json()["http_version"] == "1.1"
    r = https(s, client_ctx(certs))          # no ALPN at all
    assert r.alpn is None and r.status == 200
    with httpx.Client(verify=client_ctx(certs), http2=False, timeout=TIMEOUT) as c:
        r = c.get(f"https://127.0.0.1:{s.port}/h1")
        assert r.http_version == "HTTP/1.1" and r.json()["http_version"] == "1.1"


def test_alpn_http1_flag(srv, certs):
    import httpx
    s = srv(ASGI, "--loop", "asyncio", "--http", "1")
    r = https(s, client_ctx(certs, alpn=["h2", "http/1.1"]))
    assert r.alpn == "http/1.1", r.alpn
    assert r.status == 200 and r.json()["http_version"] == "1.1"
    with httpx.Client(verify=client_ctx(certs), http2=True, timeout=TIMEOUT) as c:
        r = c.get(f"https://127.0.0.1:{s.port}/h1")
        assert r.http_version == "HTTP/1.1"
    out = subprocess.run(["curl", "-sS", "--max-time", "5", "--cacert", str(certs.ca_pem),
                          "--http2", "-o", "/dev/null", "-w", "%{http_version}",
                          f"https://127.0.0.1:{s.port}/"], capture_output=True, timeout=10)
    assert out.stdout == b"1.1", (out.stdout, out.stderr)


# --------------------------------------------------------------------------- client certificates

@pytest.fixture
def cert_required(srv, certs):
    return srv(ASGI, "--loop", "asyncio", "--ssl-ca-certs", str(certs.ca_pem),
               "--ssl-cert-reqs", "required")


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
def test_client_cert_required_none_sent(cert_required, certs, version):
    s = cert_required
    v = getattr(ssl.TLSVersion, version)
    verdict, detail = attempt(s, client_ctx(certs, max_version=v))
    assert verdict == "refused", detail
    # the server is fine, and serves a client with a good certificate
    r = https(s, client_ctx(certs, max_version=v, cert=certs.client))
    assert r.status == 200


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
def test_client_cert_required_other_ca(cert_required, certs, version):
    s = cert_required
    v = getattr(ssl.TLSVersion, version)
    verdict, detail = attempt(s, client_ctx(certs, max_version=v, cert=certs.other_client))
    assert verdict == "refused", detail


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
def test_client_cert_required_good_cert(cert_required, certs, version):
    s = cert_required
    v = getattr(ssl.TLSVersion, version)
    r = https(s, client_ctx(certs, max_version=v, cert=certs.client))
    assert r.status == 200
    tls = r.json()["tls"]
    assert len(tls["client_cert_chain"]) >= 1
    assert pem_der(tls["client_cert_chain"][0]) == leaf_der(certs.client)
    assert tls["client_cert_name"] == subject_rfc4514(certs.client)
    assert tls["client_cert_error"] is None
    assert pem_der(tls["server_cert"]) == leaf_der(certs.server)


def test_client_cert_optional(srv, certs):
    s = srv(ASGI, "--loop", "asyncio", "--ssl-ca-certs", str(certs.ca_pem),
            "--ssl-cert-reqs", "optional")
    r = https(s, client_ctx(certs))
    assert r.status == 200
    tls = r.json()["tls"]
    assert tls["client_cert_chain"] == [] and tls["client_cert_name"] is None
    r = https(s, client_ctx(certs, cert=certs.client))
    assert r.status == 200
    tls = r.json()["tls"]
    assert pem_der(tls["client_cert_chain"][0]) == leaf_der(certs.client)
    assert tls["client_cert_name"] == subject_rfc4514(certs.client)


def test_client_cert_optional_bad_cert_refused(srv, certs):
    """optional: a certificate that is sent is verified, so one from another CA fails."""
    s = srv(ASGI, "--loop", "asyncio", "--ssl-ca-certs", str(certs.ca_pem),
            "--ssl-cert-reqs", "optional")
    for v in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        verdict, detail = attempt(s, client_ctx(certs, max_version=v, cert=certs.other_client))
        assert verdict == "refused", (v, detail)
    assert https(s, client_ctx(certs)).status == 200


def test_client_cert_ignored_when_not_asked(srv, certs):
    """--ssl-cert-reqs none (the default): no certificate request, so none in the scope."""
    s = srv(ASGI, "--loop", "asyncio")
    r = https(s, client_ctx(certs, cert=certs.client))
    assert r.status == 200
    assert r.json()["tls"]["client_cert_chain"] == []


# --------------------------------------------------------------------------- client-side trust

def test_client_rejects_untrusted_server(srv, certs):
    s = srv(WSGI)
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_connect(s, client_ctx(certs, trust=certs.other_ca)).close()
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_connect(s, client_ctx(certs), hostname="wrong.example.org").close()
    r = https(s, client_ctx(certs), hostname="localhost")
    assert r.status == 200


# --------------------------------------------------------------------------- non-TLS bytes on the port

def test_plain_http_on_tls_port(srv, certs):
    s = srv(WSGI)
    ctx = client_ctx(certs)
    pid = plain_pid(s, ctx)
    data, closed = exchange(s, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert status_of(data) == 400, data
    assert data.startswith(b"HTTP/1.1 400 Bad Request\r\n"), data
    assert PLAIN_HTTP_BODY in data, data
    assert closed, data
    data, closed = exchange(s, b"POST /x HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc")
    assert status_of(data) == 400 and PLAIN_HTTP_BODY in data and closed, data
    assert plain_pid(s, ctx) == pid


@pytest.mark.parametrize("garbage", [
    pytest.param(bytes(range(256)) * 4, id="binary"),
    pytest.param(b"\x16\x03\x01\x00\x10" + b"\xff" * 16, id="bad-client-hello"),
    pytest.param(b"\x16\x03\x01\x40\x00" + b"\x01" * 100, id="truncated-record"),
    pytest.param(b"\x17\x03\x03\x00\x20" + b"\x00" * 32, id="app-data-first"),
])
def test_garbage_then_close(srv, certs, garbage):
    s = srv(WSGI)
    ctx = client_ctx(certs)
    pid = plain_pid(s, ctx)
    sock = s.connect(TIMEOUT)
    try:
        try:
            sock.sendall(garbage)
            sock.shutdown(socket.SHUT_WR)
        except OSError:         # the server was quicker: it already closed (reset)
            pass
        data = read_until_close(sock, 4)
        assert not data.startswith(b"HTTP/1.1 200"), data
    finally:
        sock.close()
    # and garbage with the client gone at once
    sock = s.connect(TIMEOUT)
    try:
        sock.sendall(garbage)
    except OSError:
        pass
    sock.close()
    assert plain_pid(s, ctx) == pid
    assert s.proc.poll() is None


def test_garbage_is_closed_by_server(srv, certs):
    """The server ends the connection itself (the client keeps its side open)."""
    s = srv(WSGI)
    t0 = time.monotonic()
    data, closed = exchange(s, b"\x16\x03\x01\x00\x10" + b"\xff" * 16, timeout=4)
    assert closed, "the server kept a connection with a broken ClientHello open"
    assert time.monotonic() - t0 < 3.5
    assert not data.startswith(b"HTTP/"), data


# --------------------------------------------------------------------------- session resumption

@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
def test_session_resumption(srv, certs, version):
    s = srv(WSGI)
    v = getattr(ssl.TLSVersion, version)
    ctx = client_ctx(certs, max_version=v)
    r = https(s, ctx)
    assert not r.reused and r.version == version.replace("_", ".")
    sess = r.session
    assert sess is not None
    for _ in range(3):
        r = https(s, ctx, session=sess)
        assert r.status == 200
        assert r.reused, f"{version}: session not resumed"
        sess = r.session


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
def test_session_resumption_across_workers(srv, certs, version):
    """Sessions from one worker resume on the other: the ticket keys are shared.

    Connections mostly go to one worker of two, so a /sleep request holds that worker's
    I/O thread for a moment (WSGI, --threads 1) and the resumptions meanwhile land on
    the other.  Each resumption uses the session of the connection before it."""
    s = srv(WSGI, env={"CORSAC_WORKERS": "2"})
    v = getattr(ssl.TLSVersion, version)
    ctx = client_ctx(certs, max_version=v)
    r = https(s, ctx)
    sess, issuer = r.session, r.json()["pid"]
    results = []        # (issuer pid, resuming pid, reused)

    def resume():
        nonlocal sess, issuer
        r = https(s, ctx, session=sess)
        assert r.status == 200
        pid = r.json()["pid"]
        results.append((issuer, pid, r.reused))
        sess, issuer = r.session, pid

    def crossed():
        return [x for x in results if x[0] != x[1]]

    deadline = time.monotonic() + 20
    while len(crossed()) < 2 and time.monotonic() < deadline:
        sleeper = threading.Thread(target=https, args=(s, client_ctx(certs)),
                                   kwargs={"path": "/sleep?s=0.8"}, daemon=True)
        sleeper.start()
        time.sleep(0.2)
        for _ in range(3):
            resume()
        sleeper.join(5)
        resume()
    assert all(x[2] for x in results), f"{version}: not every session resumed: {results}"
    assert crossed(), f"{version}: never saw a session resume on the other worker: {results}"


# --------------------------------------------------------------------------- start-up errors

def _startup_fails(corsac, args, needles, env=None):
    t0 = time.monotonic()
    s = corsac(WSGI, *args, env=env, wait=False)
    try:
        rc = s.proc.wait(10)
    except subprocess.TimeoutExpired:
        pytest.fail(f"corsac kept running with {args}:\n{s.log()}")
    log = s.log()
    assert rc != 0, log
    assert time.monotonic() - t0 < 10
    assert any(n in log for n in needles), f"none of {needles} in:\n{log}"
    return log


def test_startup_missing_cert(corsac, certs, tmp_path):
    missing = tmp_path / "no-such-cert.pem"
    _startup_fails(corsac, ["--ssl-certfile", str(missing), "--ssl-keyfile", str(certs.key)],
                   [str(missing)])


def test_startup_missing_key(corsac, certs, tmp_path):
    missing = tmp_path / "no-such-key.pem"
    _startup_fails(corsac, ["--ssl-certfile", str(certs.cert), "--ssl-keyfile", str(missing)],
                   [str(missing)])


def test_startup_key_does_not_match_cert(corsac, certs):
    log = _startup_fails(corsac, ["--ssl-certfile", str(certs.cert),
                                  "--ssl-keyfile", str(certs.other_key)],
                         [str(certs.other_key), str(certs.cert)])
    assert "match" in log.lower(), log


def test_startup_not_a_certificate(corsac, certs, tmp_path):
    junk = tmp_path / "junk.pem"
    junk.write_text("this is not a certificate\n")
    _startup_fails(corsac, ["--ssl-certfile", str(junk), "--ssl-keyfile", str(certs.key)],
                   [str(junk)])


@pytest.mark.parametrize("password", [None, "wrong password"])
def test_startup_encrypted_key_bad_password(corsac, certs, password):
    args = ["--ssl-certfile", str(certs.cert), "--ssl-keyfile", str(certs.enc_key)]
    if password is not None:
        args += ["--ssl-keyfile-password", password]
    _startup_fails(corsac, args, [str(certs.enc_key)])


@pytest.mark.parametrize("how", ["flag", "env"])
def test_encrypted_key_right_password(corsac, certs, how):
    args = ["--ssl-certfile", str(certs.cert), "--ssl-keyfile", str(certs.enc_key)]
    env = None
    if how == "flag":
        args += ["--ssl-keyfile-password", certs.password]
    else:
        env = {"CORSAC_SSL_KEYFILE_PASSWORD": certs.password}
    s = corsac(WSGI, *args, env=env)
    r = https(s, client_ctx(certs))
    assert r.status == 200 and r.json()["HTTPS"] == "on"


def test_keyfile_defaults_to_certfile(corsac, certs):
    s = corsac(WSGI, "--ssl-certfile", str(certs.both))
    r = https(s, client_ctx(certs))
    assert r.status == 200 and r.peer_der == leaf_der(certs.server)


@pytest.mark.parametrize("reqs", ["required", "optional"])
def test_startup_cert_reqs_without_ca(corsac, certs, reqs):
    _startup_fails(corsac, list(certs.args("--ssl-cert-reqs", reqs)), ["ssl-ca-certs"])


def test_startup_missing_ca_file(corsac, certs, tmp_path):
    missing = tmp_path / "no-such-ca.pem"
    _startup_fails(corsac, list(certs.args("--ssl-ca-certs", str(missing),
                                           "--ssl-cert-reqs", "required")), [str(missing)])


# --------------------------------------------------------------------------- SIGHUP

def _install(leaf, cert_path, key_path):
    """Replace the files atomically (as a deploy tool would)."""
    for path, data in ((cert_path, b"".join(b.bytes() for b in leaf.cert_chain_pems)),
                       (key_path, leaf.private_key_pem.bytes())):
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)


def test_sighup_rereads_certificates(corsac, certs, tmp_path):
    a = certs.ca.issue_cert("127.0.0.1", "localhost", common_name="cert A")
    b = certs.ca.issue_cert("127.0.0.1", "localhost", common_name="cert B")
    cert, key = tmp_path / "live.pem", tmp_path / "live.key"
    _install(a, cert, key)
    s = corsac(WSGI, "--ssl-certfile", str(cert), "--ssl-keyfile", str(key))
    ctx = client_ctx(certs)
    assert https(s, ctx).peer_der == leaf_der(a)
    _install(b, cert, key)
    s.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    seen = None
    while time.monotonic() < deadline:
        try:
            seen = https(s, ctx).peer_der
        except (ssl.SSLError, ConnectionError, OSError):
            seen = None      # a refused connection during the reload is a failure
            break
        if seen == leaf_der(b):
            break
        time.sleep(0.1)
    assert seen == leaf_der(b), "new connections did not get the new certificate\n" + s.log()
    assert s.proc.poll() is None


def test_sighup_with_broken_files_keeps_serving(corsac, certs, tmp_path):
    a = certs.ca.issue_cert("127.0.0.1", "localhost", common_name="cert A")
    cert, key = tmp_path / "live.pem", tmp_path / "live.key"
    _install(a, cert, key)
    s = corsac(WSGI, "--ssl-certfile", str(cert), "--ssl-keyfile", str(key))
    ctx = client_ctx(certs)
    assert https(s, ctx).peer_der == leaf_der(a)
    cert.write_text("broken\n")
    s.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 2.5
    n = 0
    while time.monotonic() < deadline:
        r = https(s, ctx)
        assert r.status == 200 and r.peer_der == leaf_der(a)
        n += 1
        time.sleep(0.1)
    assert n > 5
    assert s.proc.poll() is None, s.log()


# --------------------------------------------------------------------------- ciphers

def test_ssl_ciphers_limit_tls12(corsac, certs):
    key = x509.load_pem_x509_certificate(certs.server.cert_chain_pems[0].bytes()).public_key()
    kind = "ECDSA" if "EllipticCurve" in type(key).__name__ or "EC" in type(key).__name__ else "RSA"
    only = f"ECDHE-{kind}-AES128-GCM-SHA256"
    other = f"ECDHE-{kind}-AES256-GCM-SHA384"
    s = corsac(ASGI, "--loop", "asyncio", *certs.args("--ssl-ciphers", only))
    r = https(s, client_ctx(certs, max_version=ssl.TLSVersion.TLSv1_2))
    assert r.cipher[0] == only, r.cipher
    assert r.json()["tls"]["cipher_suite"] == {"ECDSA": 0xC02B, "RSA": 0xC02F}[kind]
    verdict, detail = attempt(s, client_ctx(certs, max_version=ssl.TLSVersion.TLSv1_2,
                                            ciphers=other))
    assert verdict == "refused", detail
    # TLS 1.3 suites are not part of the TLS 1.2 list
    r = https(s, client_ctx(certs))
    assert r.version == "TLSv1.3" and r.status == 200


def test_default_ciphers_are_aead_ecdhe(srv, certs):
    s = srv(WSGI)
    for cbc in ("ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA384", "ECDHE-RSA-AES128-SHA"):
        verdict, detail = attempt(s, client_ctx(certs, max_version=ssl.TLSVersion.TLSv1_2,
                                                ciphers=cbc + ":@SECLEVEL=0"))
        assert verdict == "refused", (cbc, detail)
    for good in ("ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
                 "ECDHE-ECDSA-CHACHA20-POLY1305"):
        r = https(s, client_ctx(certs, max_version=ssl.TLSVersion.TLSv1_2, ciphers=good))
        assert r.cipher[0] == good and r.status == 200


def test_tls13_suites_prefer_aes128_then_client_chacha(srv, certs):
    """TLS 1.3: AES-128-GCM for a client offering OpenSSL's default order; ChaCha20 for a
    client that lists it first (one without AES instructions); AES-256 when asked for."""
    s = srv(WSGI)
    r = https(s, client_ctx(certs))
    assert r.version == "TLSv1.3" and r.cipher[0] == "TLS_AES_128_GCM_SHA256", r.cipher

    def s_client(suites):
        out = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{s.port}", "-tls1_3",
                              "-ciphersuites", suites, "-CAfile", str(certs.ca_pem)],
                             input=b"", capture_output=True, timeout=10)
        text = (out.stdout + out.stderr).decode(errors="replace")
        assert out.returncode == 0, text
        return text

    assert "Cipher is TLS_CHACHA20_POLY1305_SHA256" in s_client(
        "TLS_CHACHA20_POLY1305_SHA256:TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256")
    assert "Cipher is TLS_AES_256_GCM_SHA384" in s_client("TLS_AES_256_GCM_SHA384")


# --------------------------------------------------------------------------- wss

@pytest.mark.parametrize("loop", LOOPS)
def test_wss_echo(srv, certs, loop):
    from websockets.sync.client import connect as ws_connect
    s = srv(ASGI, *asgi_args(loop))
    with ws_connect(f"wss://127.0.0.1:{s.port}/ws", ssl=client_ctx(certs),
                    open_timeout=TIMEOUT, close_timeout=TIMEOUT) as ws:
        ws.send("hello over tls")
        assert ws.recv(TIMEOUT) == "hello over tls"
        blob = os.urandom(300000)
        ws.send(blob)
        assert ws.recv(TIMEOUT) == blob
        ws.send("scope")
        j = json.loads(ws.recv(TIMEOUT))
    assert j["type"] == "websocket"
    assert j["scheme"] == "wss"
    assert j["has_tls"] and j["tls"]["tls_version"] == 0x0304
    assert pem_der(j["tls"]["server_cert"]) == leaf_der(certs.server)


# --------------------------------------------------------------------------- idle / slow handshakes

@pytest.mark.parametrize("sent", [
    pytest.param(b"", id="nothing"),
    pytest.param(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", id="partial-client-hello"),
])
def test_idle_handshake_closed(_pool, certs, sent):
    s = _pool(WSGI, certs.args("--header-read-timeout", "1"))
    ctx = client_ctx(certs)
    pid = plain_pid(s, ctx)
    sock = s.connect(TIMEOUT)
    try:
        t0 = time.monotonic()
        if sent:
            sock.sendall(sent)
        sock.settimeout(6)
        try:
            while sock.recv(65536):
                pass
        except ConnectionResetError:
            pass
        except socket.timeout:
            pytest.fail("the server kept a silent connection open for 6 s "
                        "(--header-read-timeout 1)")
        took = time.monotonic() - t0
        assert 0.5 < took < 4, took
    finally:
        sock.close()
    assert plain_pid(s, ctx) == pid


def test_idle_after_handshake_closed(_pool, certs):
    """Handshake done but no request: the header timeout still ends the connection."""
    s = _pool(WSGI, certs.args("--header-read-timeout", "1"))
    ctx = client_ctx(certs)
    with tls_connect(s, ctx) as sock:
        sock.settimeout(6)
        t0 = time.monotonic()
        data = b""
        try:
            while True:
                b = sock.recv(65536)
                if not b:
                    break
                data += b
        except (ConnectionResetError, ssl.SSLError):
            pass
        except socket.timeout:
            pytest.fail("idle TLS connection not closed within 6 s")
        assert time.monotonic() - t0 < 4
        assert data == b"" or status_of(data) == 408, data
    assert https(s, ctx).status == 200
