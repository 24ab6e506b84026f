"""The pre-fork arbiter (docs/arbiter-contract.md), exercised with real processes and real signals:
worker children and their process titles, respawn after SIGKILL, WORKER TIMEOUT, HUP reload with no
failed request, TTIN/TTOU, TERM/QUIT, --max-requests, import errors (with and without --preload),
--pid, workers dying with a SIGKILLed arbiter, wsgi.multiprocess.

Workers are found as the (non-zombie) children of the arbiter pid in /proc.  Every wait is a poll
loop with a deadline.  Worker pids seen by a test are SIGKILLed at teardown if they are somehow still
around (only if their cmdline still says "worker", to be safe against pid reuse)."""
import http.client
import os
import re
import resource
import shutil
import signal
import subprocess
import threading
import time

import pytest

pytestmark = pytest.mark.timeout(90)

APP = "arbiter_app:app"
PS = shutil.which("ps")

_SEEN_WORKERS = set()


# --------------------------------------------------------------------------- /proc helpers

def proc_stat(pid):
    """(state, ppid) of a process, or None if it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode("latin-1")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    rest = data[data.rindex(")") + 2:].split()
    return rest[0], int(rest[1])


def alive(pid):
    """True if pid exists and is not a zombie (a zombie has exited; only the reaping is pending)."""
    st = proc_stat(pid)
    return st is not None and st[0] != "Z"


def children(ppid):
    """Sorted pids of the live (non-zombie) children of ppid."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        st = proc_stat(name)
        if st and st[1] == ppid and st[0] != "Z":
            out.append(int(name))
    _SEEN_WORKERS.update(out)
    return sorted(out)


def cmdline(pid):
    """/proc/PID/cmdline with NULs as spaces (trailing padding stripped); '' if gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return ""
    return " ".join(p.decode("utf-8", "replace") for p in raw.split(b"\0") if p).strip()


def ps_args(pid):
    r = subprocess.run([PS, "-ww", "-o", "args=", "-p", str(pid)], capture_output=True, text=True,
                       timeout=10)
    return r.stdout.strip()


def wait_for(pred, timeout, interval=0.05):
    """Poll pred() until it returns a truthy value (returned) or the deadline passes (returns None)."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


def wait_workers(srv, n, timeout=10):
    """Wait until the arbiter has exactly n live children; returns their pids (fails otherwise)."""
    got = wait_for(lambda: (lambda c: c if len(c) == n else None)(children(srv.proc.pid)), timeout)
    assert got, f"expected {n} workers, have {children(srv.proc.pid)}\n{srv.log()}"
    return got


@pytest.fixture(autouse=True)
def _kill_stray_workers():
    _SEEN_WORKERS.clear()
    yield
    for pid in list(_SEEN_WORKERS):
        if alive(pid) and "worker" in cmdline(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    _SEEN_WORKERS.clear()


# --------------------------------------------------------------------------- HTTP helpers

def get(srv, path="/", timeout=5):
    """One GET on a fresh connection: (status, body). Raises on any connection problem."""
    conn = http.client.HTTPConnection(srv.host, srv.port, timeout=timeout)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


class ClientLoop(threading.Thread):
    """Sequential GETs (fresh connection each) until stopped or max_requests were made.

    results: list of (t_start, t_end, ok, body_or_error); a failure is any exception or non-200."""

    def __init__(self, srv, path, max_requests=5000, pause=0.002, timeout=5):
        super().__init__(daemon=True)
        self.srv, self.path, self.max_requests, self.pause, self.timeout = srv, path, max_requests, pause, timeout
        self.results = []
        self.stop_evt = threading.Event()

    def run(self):
        for _ in range(self.max_requests):
            if self.stop_evt.is_set():
                break
            t0 = time.monotonic()
            try:
                st, body = get(self.srv, self.path, self.timeout)
                ok = st == 200
                res = body if ok else f"status {st}: {body!r}"
            except Exception as e:  # noqa: BLE001 - every exception is a failed request
                ok, res = False, repr(e)
            self.results.append((t0, time.monotonic(), ok, res))
            if self.pause:
                time.sleep(self.pause)

    def stop(self):
        self.stop_evt.set()
        self.join(self.timeout + 5)
        assert not self.is_alive(), "client loop did not finish"

    def successes(self):
        return [r for r in self.results if r[2]]

    def failures(self):
        return [r for r in self.results if not r[2]]


# --------------------------------------------------------------------------- workers and titles

@pytest.mark.parametrize("name_args,name", [((), "corsac"), (("--process-name", "shop"), "shop")],
                         ids=["default-name", "process-name"])
def test_workers_are_children_with_titles(corsac, name_args, name):
    srv = corsac(APP, "--workers", "3", *name_args)
    arbiter = srv.proc.pid
    assert f"({arbiter})" in re.search(r"Listening at: \S+ \(\d+\)", srv.log()).group(0)
    pids = wait_workers(srv, 3)

    worker_re = re.compile(rf"^{re.escape(name)}: worker (\d+)\b")

    def titled():
        ks = [worker_re.match(cmdline(p)) for p in pids]
        return ks if all(ks) else None

    ks = wait_for(titled, 10)
    assert ks, {p: cmdline(p) for p in pids}
    assert sorted(int(m.group(1)) for m in ks) == [1, 2, 3], {p: cmdline(p) for p in pids}
    assert cmdline(arbiter).startswith(f"{name}: arbiter"), cmdline(arbiter)

    if PS:
        assert ps_args(arbiter).startswith(f"{name}: arbiter"), ps_args(arbiter)
        for p in pids:
            assert worker_re.match(ps_args(p)), ps_args(p)

    log = wait_for(lambda: (lambda t: t if all(f"Booting worker with pid: {p}" in t for p in pids) else None)(
        srv.log()), 5) or srv.log()
    assert "Using 3 workers" in log, log
    for p in pids:
        assert f"Booting worker with pid: {p}" in log, log
    # every worker serves
    assert get(srv, "/")[0] == 200


# --------------------------------------------------------------------------- a worker SIGKILLed

def test_killed_worker_is_respawned_while_serving(corsac):
    srv = corsac(APP, "--workers", "2")
    old = wait_workers(srv, 2)
    loop = ClientLoop(srv, "/pid")
    loop.start()
    try:
        assert wait_for(lambda: len(loop.successes()) >= 10, 10), loop.results[-5:]
        victim = old[0]
        t_kill = time.monotonic()
        os.kill(victim, signal.SIGKILL)

        def respawned():
            c = children(srv.proc.pid)
            new = [p for p in c if p not in old]
            return new if len(c) == 2 and new else None

        new = wait_for(respawned, 3)
        t_respawn = time.monotonic()
        assert new, f"no new worker within 3 s of the kill (children {children(srv.proc.pid)})\n{srv.log()}"
        msg = f"Worker (pid:{victim}) was killed by signal 9"
        assert wait_for(lambda: msg in srv.log(), 3), srv.log()
        assert t_respawn - t_kill < 3.5
        assert wait_for(lambda: re.match(r"^corsac: worker \d+", cmdline(new[0])), 5), cmdline(new[0])
        # keep the client going for a while after the respawn
        wait_for(lambda: len([r for r in loop.results if r[0] > t_respawn + 0.2]) >= 50, 5)
        time.sleep(0.3)
    finally:
        loop.stop()
    fails = loop.failures()
    after = [r for r in loop.results if r[0] > t_respawn]
    assert len(after) >= 20, f"only {len(after)} requests after the respawn"
    assert [r for r in after if not r[2]] == [], "requests failed after the respawn"
    assert len(fails) <= 2, fails
    assert alive(old[1]), "the other worker should not have been touched"


# --------------------------------------------------------------------------- WORKER TIMEOUT

def test_spinning_worker_times_out_and_is_replaced(corsac):
    soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (0, hard))  # SIGABRT: no core file from the worker
    try:
        srv = corsac(APP, "--threads", "1", "--workers", "1", "--timeout", "2")
    finally:
        resource.setrlimit(resource.RLIMIT_CORE, (soft, hard))
    (old,) = wait_workers(srv, 1)
    st, body = get(srv, "/pid")
    assert (st, body) == (200, str(old).encode())

    spin_result = {}

    def spin():
        try:
            spin_result["resp"] = get(srv, "/spin", timeout=20)
        except Exception as e:  # noqa: BLE001 - expected: the worker is killed under the request
            spin_result["error"] = e

    t = threading.Thread(target=spin, daemon=True)
    t.start()
    t0 = time.monotonic()
    msg = f"WORKER TIMEOUT (pid:{old})"
    assert wait_for(lambda: msg in srv.log(), 10), srv.log()
    assert time.monotonic() - t0 >= 1.5, "timed out before --timeout 2 elapsed"

    new = wait_for(lambda: (lambda c: c if len(c) == 1 and c[0] != old else None)(children(srv.proc.pid)), 10)
    assert new, f"worker not replaced: children {children(srv.proc.pid)}\n{srv.log()}"
    assert wait_for(lambda: not alive(old), 5), "old worker still alive"
    t.join(15)
    assert "resp" not in spin_result or spin_result["resp"][0] != 200, spin_result

    st, body = get(srv, "/pid", timeout=10)
    assert (st, body) == (200, str(new[0]).encode()), srv.log()
    assert get(srv, "/")[0] == 200


# --------------------------------------------------------------------------- HUP reload

HUP_APP = '''\
VERSION = b"{version}"
# {pad}


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(VERSION)))])
    return [VERSION]
'''


def _write_module(path, version, pad):
    tmp = path.with_suffix(".tmp")
    tmp.write_text(HUP_APP.format(version=version, pad=pad))
    os.replace(tmp, path)  # atomic: a worker importing now sees the old or the new file, never half


def test_hup_reload_serves_new_code_without_failures(corsac, tmp_path):
    mod = tmp_path / "arbiter_hup_app.py"
    _write_module(mod, "v1", "first")
    srv = corsac("arbiter_hup_app:app", "--workers", "2", app_dir=tmp_path,
                 env={"PYTHONDONTWRITEBYTECODE": "1"})
    old = wait_workers(srv, 2)
    assert get(srv, "/") == (200, b"v1")

    loop = ClientLoop(srv, "/")
    loop.start()
    try:
        assert wait_for(lambda: len(loop.successes()) >= 10, 10), loop.results[-5:]
        # a different size too, so no stale bytecode cache could ever match
        _write_module(mod, "v2", "second version of the module")
        t_hup = time.monotonic()
        srv.proc.send_signal(signal.SIGHUP)

        v2 = wait_for(lambda: any(r[2] and r[3] == b"v2" for r in loop.results), 10)
        assert v2, f"still no v2 response 10 s after HUP; last: {loop.results[-3:]}\n{srv.log()}"
        gone = wait_for(lambda: not any(alive(p) for p in old), 10)
        t_gone = time.monotonic()
        assert gone, f"old workers {[p for p in old if alive(p)]} still alive 10 s after HUP\n{srv.log()}"
        wait_for(lambda: len([r for r in loop.results if r[0] > t_gone]) >= 30, 5)
    finally:
        loop.stop()

    fails = loop.failures()
    assert fails == [], f"{len(fails)} of {len(loop.results)} requests failed: {fails[:5]}\n{srv.log()}"
    assert all(r[3] in (b"v1", b"v2") for r in loop.results)
    after = [r for r in loop.results if r[0] > t_gone]
    assert after and all(r[3] == b"v2" for r in after), after[:5]
    assert any(r[0] > t_hup for r in loop.results)
    new = wait_workers(srv, 2)
    assert not set(new) & set(old)
    for _ in range(10):
        assert get(srv, "/") == (200, b"v2")


# --------------------------------------------------------------------------- TTIN / TTOU

def test_ttin_ttou_change_the_worker_count(corsac):
    srv = corsac(APP, "--workers", "3", "--graceful-timeout", "5")
    wait_workers(srv, 3)
    srv.proc.send_signal(signal.SIGTTIN)
    wait_workers(srv, 4)
    srv.proc.send_signal(signal.SIGTTOU)
    wait_workers(srv, 3)
    assert get(srv, "/")[0] == 200

    srv.proc.send_signal(signal.SIGTTOU)
    wait_workers(srv, 2)
    srv.proc.send_signal(signal.SIGTTOU)
    (last,) = wait_workers(srv, 1)
    # more TTOUs never take it below one worker
    counts = []
    for _ in range(2):
        srv.proc.send_signal(signal.SIGTTOU)
        deadline = time.monotonic() + 0.8
        while time.monotonic() < deadline:
            counts.append(len(children(srv.proc.pid)))
            time.sleep(0.02)
    assert min(counts) >= 1, counts
    assert children(srv.proc.pid) == [last], "the last worker was replaced or removed"
    assert get(srv, "/pid") == (200, str(last).encode())
    assert srv.proc.poll() is None


# --------------------------------------------------------------------------- TERM / QUIT

def test_term_under_load_finishes_inflight_requests(corsac, tmp_path):
    record = tmp_path / "record.txt"
    srv = corsac("recorder:app", "--workers", "2", "--threads", "4", "--graceful-timeout", "10",
                 env={"CORSAC_TEST_RECORD": str(record)})
    workers = wait_workers(srv, 2)
    n = 4
    results = [None] * n

    def slow(i):
        try:
            results[i] = get(srv, "/slow?s=1", timeout=15)
        except Exception as e:  # noqa: BLE001
            results[i] = e

    threads = [threading.Thread(target=slow, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()

    def started():
        try:
            return record.read_text().count("GET /slow") >= n
        except FileNotFoundError:
            return False

    assert wait_for(started, 5), f"the {n} requests did not reach the app\n{srv.log()}"
    t0 = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    try:
        code = srv.proc.wait(15)
    except subprocess.TimeoutExpired:
        code = None
    elapsed = time.monotonic() - t0
    for t in threads:
        t.join(10)
    assert results == [(200, b"slow done\n")] * n, results
    assert code == 0, srv.log()
    assert elapsed < 6, f"exit took {elapsed:.1f} s for 1 s requests (graceful timeout 10)"
    assert wait_for(lambda: not any(alive(p) for p in workers), 3), "workers outlived the arbiter"


def test_quit_exits_promptly(corsac):
    srv = corsac(APP, "--workers", "2")
    workers = wait_workers(srv, 2)
    assert get(srv, "/")[0] == 200
    t0 = time.monotonic()
    srv.proc.send_signal(signal.SIGQUIT)
    try:
        code = srv.proc.wait(3)
    except subprocess.TimeoutExpired:
        code = None
    assert code == 0, f"exit code {code} after {time.monotonic() - t0:.1f} s\n{srv.log()}"
    assert time.monotonic() - t0 < 3
    assert wait_for(lambda: not any(alive(p) for p in workers), 3), "workers outlived the arbiter"


# --------------------------------------------------------------------------- --max-requests

@pytest.mark.timeout(120)
def test_max_requests_recycles_workers_without_failures(corsac):
    srv = corsac(APP, "--workers", "2", "--max-requests", "100")
    wait_workers(srv, 2)
    pids, fails = set(), []
    for i in range(1000):
        try:
            st, body = get(srv, "/pid")
        except Exception as e:  # noqa: BLE001
            fails.append((i, repr(e)))
            continue
        if st != 200:
            fails.append((i, st, body))
            continue
        pids.add(int(body))
    assert fails == [], f"{len(fails)} failed: {fails[:5]}\n{srv.log()[-3000:]}"
    assert len(pids) >= 3, pids
    log = srv.log()
    assert "was killed by signal" not in log and "WORKER TIMEOUT" not in log, log[-3000:]


# --------------------------------------------------------------------------- import errors

@pytest.mark.parametrize("level", ["info", "debug"])
@pytest.mark.parametrize("preload", [False, True], ids=["no-preload", "preload"])
def test_import_error_exits_1_without_fork_loop(corsac, preload, level):
    """--log-level debug too: a server may log some boots at DEBUG, and a fork loop must show there."""
    args = ["--workers", "2", "--log-level", level] + (["--preload"] if preload else [])
    srv = corsac("arbiter_broken:app", *args, wait=False)
    try:
        code = srv.proc.wait(10)
    except subprocess.TimeoutExpired:
        code = None
    out = srv.log()
    assert code == 1, f"exit code {code}\n{out}"
    assert out.count("corsac: error:") == 1, out
    booting = len(re.findall(r"Booting worker", out))
    if preload:
        assert booting == 0, out
    else:
        assert booting <= 2, out


# --------------------------------------------------------------------------- --pid

def test_pid_file_written_and_removed(corsac, tmp_path):
    pidfile = tmp_path / "corsac.pid"
    srv = corsac(APP, "--workers", "1", "--pid", str(pidfile))

    def content():
        try:
            return pidfile.read_text().strip()
        except FileNotFoundError:
            return None

    got = wait_for(content, 5)
    assert got == str(srv.proc.pid), (got, srv.proc.pid)
    assert srv.stop(signal.SIGTERM) == 0
    assert not pidfile.exists(), "pid file left behind after TERM"


# --------------------------------------------------------------------------- workers die with the arbiter

def test_workers_exit_when_arbiter_is_killed(corsac):
    srv = corsac(APP, "--workers", "2")
    workers = wait_workers(srv, 2)
    assert get(srv, "/")[0] == 200
    os.kill(srv.proc.pid, signal.SIGKILL)
    srv.proc.wait(5)
    left = wait_for(lambda: not any(alive(p) for p in workers), 5)
    assert left, f"workers {[p for p in workers if alive(p)]} still alive 5 s after the arbiter died"


# --------------------------------------------------------------------------- wsgi.multiprocess

@pytest.mark.parametrize("workers,expected", [("1", b"False"), ("2", b"True")])
def test_wsgi_multiprocess(corsac, workers, expected):
    srv = corsac(APP, "--workers", workers)
    wait_workers(srv, int(workers))
    for _ in range(4):
        assert get(srv, "/multiprocess") == (200, expected)


# --------------------------------------------------------------------------- request timeout, lifetime, memory

def _raw_status(srv, path, timeout=10):
    """Status code of GET path on a fresh connection (0 if the connection broke first)."""
    conn = http.client.HTTPConnection(srv.host, srv.port, timeout=timeout)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        r.read()
        return r.status
    except (OSError, http.client.HTTPException):
        return 0
    finally:
        conn.close()


@pytest.mark.parametrize("threads", ["1", "4"])
def test_request_timeout_answers_504_and_replaces_worker(corsac, threads):
    srv = corsac("arbiter_app:app", "--workers", "1", "--threads", threads, "--request-timeout", "1",
                 "--graceful-timeout", "2", "--timeout", "30")
    old = int(get(srv, "/pid")[1])
    results = {}
    t0 = time.monotonic()
    spin = threading.Thread(target=lambda: results.update(spin=_raw_status(srv, "/spin")))
    spin.start()
    if threads == "4":
        # a normal request still running on the same worker when the stuck one
        # times out (at ~1 s) completes
        time.sleep(0.6)
        slow = threading.Thread(target=lambda: results.update(slow=get(srv, "/slow?s=0.8", timeout=10)))
        slow.start()
        slow.join(10)
        assert results["slow"][0] == 200 and results["slow"][1] == b"slow done"
    spin.join(10)
    assert results["spin"] == 504
    assert time.monotonic() - t0 < 5
    # the worker is replaced: later requests are served by a new pid
    new = wait_for(lambda: (lambda r: int(r[1]) if r[0] == 200 and int(r[1]) != old else None)(
        get(srv, "/pid")), 15, interval=0.2)
    assert new, srv.log()
    assert "over --request-timeout; answered 504" in srv.log()


def test_workers_lifetime_replaces_workers_without_failures(corsac):
    srv = corsac("arbiter_app:app", "--workers", "1", "--workers-lifetime", "1")
    seen, failures = set(), 0
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline and len(seen) < 3:
        try:
            status, body = get(srv, "/pid")
            if status != 200:
                failures += 1
            else:
                seen.add(int(body))
        except OSError:
            failures += 1
        time.sleep(0.02)
    assert len(seen) >= 3, (seen, srv.log())
    assert failures == 0
    assert "reached --workers-lifetime" in srv.log()


def test_workers_max_rss_replaces_a_large_worker(corsac):
    # 1 MiB: any Python worker is over it, so the first one is replaced soon after it is ready
    srv = corsac("arbiter_app:app", "--workers", "1", "--workers-max-rss", "1")
    first = int(get(srv, "/pid")[1])
    new = wait_for(lambda: (lambda r: int(r[1]) if r[0] == 200 and int(r[1]) != first else None)(
        get(srv, "/pid")), 10, interval=0.2)
    assert new, srv.log()
    assert "over --workers-max-rss" in srv.log()


# --------------------------------------------------------------------------- hooks, log file, inherited sockets

def test_hooks_run_in_the_right_processes(corsac, tmp_path):
    notes = tmp_path / "hooks.txt"
    srv = corsac("arbiter_app:app", "--workers", "2", "--on-starting", "arbiter_hooks:on_starting",
                 "--post-fork", "arbiter_hooks:post_fork", "--worker-exit", "arbiter_hooks:worker_exit",
                 env={"CORSAC_TEST_HOOKS": str(notes)})
    workers = wait_workers(srv, 2)
    assert get(srv, "/")[0] == 200
    assert srv.stop() == 0
    lines = notes.read_text().splitlines()
    arbiter = srv.proc.pid
    assert f"on_starting {arbiter}" in lines
    forks = sorted(l.split()[1:] for l in lines if l.startswith("post_fork"))
    assert {int(f[1]) for f in forks} == set(workers) and all(f[2] == str(arbiter) for f in forks)
    exits = {int(l.split()[2]) for l in lines if l.startswith("worker_exit")}
    assert exits == set(workers)


def test_failing_post_fork_hook_stops_the_arbiter(corsac):
    srv = corsac("arbiter_app:app", "--workers", "2", "--post-fork", "arbiter_hooks:failing", wait=False)
    assert srv.proc.wait(15) == 1
    out = srv.log()
    assert out.count("corsac: error:") == 1 and "hook says no" in out


def test_log_file_and_usr1_reopen(corsac, tmp_path):
    log = tmp_path / "corsac.log"
    srv = corsac("arbiter_app:app", "--workers", "1", "--log-file", str(log), wait=False)
    assert wait_for(lambda: log.exists() and "Listening at" in log.read_text(), 15), srv.log()
    port = int(re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", log.read_text()).group(1))
    srv.port = port
    assert get(srv, "/")[0] == 200
    rotated = tmp_path / "corsac.log.1"
    log.rename(rotated)
    srv.proc.send_signal(signal.SIGUSR1)
    assert wait_for(lambda: log.exists() and log.read_text().count("Reopened the log file") >= 2, 10)
    assert srv.stop() == 0
    assert "Shutting down" in log.read_text()
    assert "Booting worker" in rotated.read_text()


def test_inherited_socket_fd_and_systemd_listen_fds(tmp_path):
    import socket
    import sys
    from pathlib import Path
    APPS = Path(__file__).parent / "apps"
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    port = s.getsockname()[1]
    fd = s.fileno()
    code = ("import os, sys; os.dup2(%d, 3); os.environ['LISTEN_PID'] = str(os.getpid()); "
            "os.environ['LISTEN_FDS'] = '1'; sys.argv = ['corsac', 'arbiter_app:app', '--workers', '1', "
            "'--app-dir', %r]; from corsac.__main__ import run; run()" % (fd, str(APPS)))
    env = dict(os.environ)
    p = subprocess.Popen([sys.executable, "-c", code], pass_fds=(fd,), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, env=env)
    try:
        s.close()

        class S:
            host, port = "127.0.0.1", None
        S.port = port
        assert wait_for(lambda: _raw_status(S, "/", timeout=2) == 200, 15)
    finally:
        p.terminate()
        out = p.communicate(timeout=15)[0].decode()
    assert p.returncode == 0, out
    assert f"Listening at: http://127.0.0.1:{port}" in out


def test_reuse_port_gives_each_worker_its_own_socket(corsac):
    srv = corsac("arbiter_app:app", "--workers", "2", "--reuse-port")
    workers = wait_workers(srv, 2)
    # each worker holds its own listening socket besides the shared one
    out = subprocess.run(["ss", "-Hltnp", f"sport = :{srv.port}"], capture_output=True, text=True,
                         timeout=10).stdout if shutil.which("ss") else ""
    if out:
        assert len(out.strip().splitlines()) == 3, out
    pids, failures = set(), 0
    for _ in range(200):
        status, body = get(srv, "/pid")
        if status != 200:
            failures += 1
        else:
            pids.add(int(body))
    assert failures == 0 and pids == set(workers)


def test_umask_applies_to_unix_socket(corsac, tmp_path):
    import stat
    path = tmp_path / "c.sock"
    srv = corsac("arbiter_app:app", "--workers", "1", "--bind", f"unix:{path}", "--umask", "077", wait=False)
    assert wait_for(lambda: path.exists() and "Listening at" in srv.log(), 15), srv.log()
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    assert srv.stop() == 0
    assert not path.exists()


def test_hup_with_broken_code_keeps_the_running_workers(corsac, tmp_path):
    mod = tmp_path / "arbiter_hup_app.py"
    _write_module(mod, "v1", "first")
    srv = corsac("arbiter_hup_app:app", "--workers", "2", app_dir=tmp_path,
                 env={"PYTHONDONTWRITEBYTECODE": "1"})
    old = wait_workers(srv, 2)
    mod.write_text("raise RuntimeError('deploy went wrong')\n")
    srv.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: "keeping the running ones" in srv.log(), 10), srv.log()
    for _ in range(20):
        assert get(srv, "/") == (200, b"v1")
    assert srv.proc.poll() is None
    assert set(children(srv.proc.pid)) >= set(old)
    # the fixed code goes live on the next HUP
    _write_module(mod, "v2", "second")
    srv.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: get(srv, "/") == (200, b"v2"), 15), srv.log()


def test_sigint_to_the_process_group_lets_inflight_finish(tmp_path):
    """Ctrl-C reaches the arbiter and every worker at once; a worker then hears
    the stop twice (directly and from the arbiter) and must still drain."""
    import sys
    from pathlib import Path
    apps = Path(__file__).parent / "apps"
    log = tmp_path / "out.log"
    with open(log, "wb") as out:
        p = subprocess.Popen([sys.executable, "-m", "corsac", "arbiter_app:app", "--app-dir", str(apps),
                              "--bind", "127.0.0.1:0", "--workers", "1", "--threads", "4"],
                             stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        m = wait_for(lambda: re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", log.read_text()), 15)
        assert m, log.read_text()

        class S:
            host, port = "127.0.0.1", int(m.group(1))
        res = {}
        t = threading.Thread(target=lambda: res.update(r=get(S, "/slow?s=1.5", timeout=10)))
        t.start()
        time.sleep(0.5)
        os.killpg(p.pid, signal.SIGINT)
        t.join(10)
        assert res.get("r") == (200, b"slow done"), log.read_text()
        assert p.wait(15) == 0
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)


def test_fd_flag_serves_an_inherited_socket(tmp_path):
    import socket
    import sys
    from pathlib import Path
    apps = Path(__file__).parent / "apps"
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    port = s.getsockname()[1]
    log = tmp_path / "out.log"
    with open(log, "wb") as out:
        p = subprocess.Popen([sys.executable, "-m", "corsac", "arbiter_app:app", "--app-dir", str(apps),
                              "--workers", "1", "--fd", str(s.fileno())], pass_fds=(s.fileno(),),
                             stdout=out, stderr=subprocess.STDOUT)
    s.close()
    try:
        class S:
            host = "127.0.0.1"
        S.port = port
        assert wait_for(lambda: _raw_status(S, "/", timeout=2) == 200, 15), log.read_text()
    finally:
        p.terminate()
        p.wait(15)
    assert p.returncode == 0
    assert f"Listening at: http://127.0.0.1:{port}" in log.read_text()
