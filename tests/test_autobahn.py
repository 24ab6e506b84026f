"""Autobahn WebSocket conformance (the fuzzing client `kosoku`) against the real `corsac`.

Runs scripts/autobahn.py's logic on the echo app tests/apps/ws_echo.py, with the
cases that fit in about a minute: all of groups 1-7 (framing, pings, reserved bits,
opcodes, fragmentation, UTF-8, close handling), 9 (big messages, many frames) and 10,
and of the permessage-deflate groups 12 and 13 (every offer/parameter combination,
12.1-12.5 and 13.1-13.7) the cases with 1000 messages of 16 to 4096 bytes (.1-.5) and
of 8 KiB in 256-byte fragments (.11).  The rest of 12/13 (1000 messages of up to
128 KiB each, tens of seconds per case) runs in `make conformance` with the whole
suite.  No case may be FAILED or ERROR; with permessage-deflate on (the default)
none may be UNIMPLEMENTED either."""
import importlib.util
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
KOSOKU = ROOT / ".venv" / "bin" / "kosoku"

spec = importlib.util.spec_from_file_location("autobahn", ROOT / "scripts" / "autobahn.py")
autobahn = importlib.util.module_from_spec(spec)
spec.loader.exec_module(autobahn)

pytestmark = [
    pytest.mark.skipif(not KOSOKU.exists() and not shutil.which("kosoku"),
                       reason="kosoku (the Autobahn fuzzing client) is not installed"),
]

# kosoku's `*` globs match prefixes (12.1.1* takes 12.1.10-18 too): exact ids here
DEFLATE_SUBGROUPS = [f"12.{i}" for i in range(1, 6)] + [f"13.{i}" for i in range(1, 8)]
QUICK_CASES = ["1-7", "9", "10"] + [f"{g}.{n}" for g in DEFLATE_SUBGROUPS
                                    for n in (1, 2, 3, 4, 5, 11)]


def run_cases(tmp_path, cases, exclude=(), server_args=(), timeout=150):
    lines = []

    class Out:
        def write(self, s):
            lines.append(s)

        def flush(self):
            pass
    res = autobahn.run(cases=cases, exclude=list(exclude), server="corsac", parallelism=4,
                       outdir=tmp_path / "autobahn", extra_args=server_args, timeout=timeout,
                       out=Out())
    text = "".join(lines)
    print(text)
    return res, text


@pytest.mark.timeout(180)
def test_autobahn_quick_groups(tmp_path):
    res, text = run_cases(tmp_path, QUICK_CASES)
    assert not res["errors"], text
    assert len(res["cases"]) == 301 + 72, text    # 1-7, 9, 10 and 12 x 6 deflate cases
    assert not res["fatal"], f"Autobahn cases FAILED or ERROR: {res['fatal']}\n{text}"
    unimplemented = [cid for cid, e in res["cases"].items()
                     if "UNIMPLEMENTED" in (e.get("behavior"), e.get("behaviorClose"))]
    assert not unimplemented, f"UNIMPLEMENTED with permessage-deflate on: {unimplemented}\n{text}"
    assert res["app_errors"] == 0, text


@pytest.mark.timeout(60)
def test_autobahn_without_compression(tmp_path):
    """--no-ws-per-message-deflate: the deflate cases are declined (UNIMPLEMENTED, not
    FAILED), and the plain cases still pass."""
    res, text = run_cases(tmp_path, ["1.1.*", "5.*", "12.1.1", "12.1.2", "13.1.1"],
                          server_args=["--no-ws-per-message-deflate"], timeout=50)
    assert not res["errors"], text
    assert not res["fatal"], text
    for cid, e in res["cases"].items():
        if cid.startswith(("12.", "13.")):
            assert e["behavior"] == "UNIMPLEMENTED", (cid, e)
        else:
            assert e["behavior"] in ("OK", "NON-STRICT", "INFORMATIONAL"), (cid, e)
