"""C-level tests of the HTTP/1.1 parser (src/corsac/core/parser.c) and the
WebSocket module (src/corsac/core/ws.c).

(a) builds tests/c/test_parser.c and tests/c/test_ws.c through the project's
    meson build with its C-tests option set (see OPTION_NAMES) and runs them
    with `meson test parser ws`, checking each program's tally line;
(b) the same with clang and AddressSanitizer + UndefinedBehaviorSanitizer;
(c) builds the libFuzzer targets in tests/fuzz/ and runs each for ~5 seconds
    on a copy of its seed corpus.
"""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "src" / "corsac" / "core"
FUZZ = Path(__file__).resolve().parent / "fuzz"
TALLY = re.compile(r"^(\d+) passed, (\d+) failed$", re.M)
# meson test names run by the unit-test build (each prints a tally line)
UNIT_TESTS = ("parser", "ws")


def _meson():
    """Command prefix for meson: the venv's, else the module, else PATH."""
    venv_meson = Path(sys.executable).parent / "meson"
    if venv_meson.exists():
        return [str(venv_meson)]
    try:
        import mesonbuild  # noqa: F401
        return [sys.executable, "-m", "mesonbuild.mesonmain"]
    except ImportError:
        pass
    found = shutil.which("meson")
    return [found] if found else None


def _env(**extra):
    env = dict(os.environ)
    # ninja lives next to meson in the venv
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.update(extra)
    return env


def _run(cmd, timeout, **kw):
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=timeout, **kw)
    out = proc.stdout.decode("utf-8", "replace")
    return proc.returncode, out


# Boolean project option that enables the C unit tests.  The build uses
# `unit_tests` (meson reserves `c_*` names: "c" is a language prefix); the
# first of these names that the options file defines is used.
OPTION_NAMES = ("unit_tests", "unit-tests", "c-tests", "ctests")


def _c_tests_option():
    for name in ("meson_options.txt", "meson.options"):
        path = ROOT / name
        if not path.exists():
            continue
        text = path.read_text()
        for opt in OPTION_NAMES:
            if re.search(r"option\(\s*['\"]" + re.escape(opt) + r"['\"]", text):
                return opt
    return None


def _meson_unit_tests(tmp_path, builddir, setup_args, env):
    meson = _meson()
    if meson is None:
        pytest.skip("meson not found (venv bin, mesonbuild module or PATH)")
    option = _c_tests_option()
    if not (ROOT / "meson.build").exists() or option is None:
        pytest.skip("root meson.build / meson_options.txt define none of the options "
                    + ", ".join(OPTION_NAMES) + " yet")
    build = tmp_path / builddir
    rc, out = _run(meson + ["setup", str(build), f"-D{option}=true"] + setup_args,
                   timeout=180, cwd=ROOT, env=env)
    assert rc == 0, f"meson setup failed:\n{out[-6000:]}"
    rc, out = _run(meson + ["test", "-C", str(build), "--print-errorlogs", *UNIT_TESTS],
                   timeout=240, cwd=ROOT, env=env)
    log = build / "meson-logs" / "testlog.txt"
    text = log.read_text(errors="replace") if log.exists() else ""
    assert rc == 0, f"meson test failed:\n{out[-8000:]}"
    tallies = _tallies(text)
    for name in UNIT_TESTS:
        assert name in tallies, f"test {name!r} did not print its tally line:\n{text[-4000:]}"
        passed, failed = tallies[name]
        assert passed > 0 and failed == 0, f"{name}: {passed} passed, {failed} failed"


def _tallies(text):
    """{test name: (passed, failed)} from a meson testlog.txt, whose sections
    start with a line "test:  <project>:<name>" followed by the output."""
    found = {}
    parts = re.split(r"^test:\s+(\S+)\s*$", text, flags=re.M)
    for name, body in zip(parts[1::2], parts[2::2]):
        m = TALLY.search(body)
        if m:
            found[name.rsplit(":", 1)[-1]] = (int(m.group(1)), int(m.group(2)))
    return found


def test_parser_units_meson(tmp_path):
    _meson_unit_tests(tmp_path, "build-c", [], _env())


def test_parser_units_meson_clang_sanitizers(tmp_path):
    if shutil.which("clang") is None:
        pytest.skip("clang not installed: sanitizer build skipped")
    env = _env(CC="clang", CXX="clang++" if shutil.which("clang++") else "c++",
               ASAN_OPTIONS="halt_on_error=1:abort_on_error=1:print_summary=1",
               UBSAN_OPTIONS="halt_on_error=1:abort_on_error=1:print_stacktrace=1")
    _meson_unit_tests(tmp_path, "build-asan",
                      ["-Db_sanitize=address,undefined", "-Db_lundef=false"], env)


# Extra sources and libraries each fuzz target links beyond parser.c.
FUZZ_EXTRA = {
    "ws": (["ws.c", "log.c"], ["-lz", "-lcrypto"]),
}


@pytest.mark.parametrize("target", ["parser", "chunked", "ws"])
def test_fuzz_smoke(tmp_path, target):
    clang = shutil.which("clang")
    if clang is None:
        pytest.skip("clang not installed: libFuzzer targets skipped")
    exe = tmp_path / f"fuzz_{target}"
    extra_src, libs = FUZZ_EXTRA.get(target, ([], []))
    rc, out = _run([clang, "-fsanitize=fuzzer,address,undefined",
                    "-fno-sanitize-recover=undefined", "-g", "-O1", f"-I{CORE}",
                    str(FUZZ / f"fuzz_{target}.c"), str(CORE / "parser.c"),
                    *[str(CORE / f) for f in extra_src], "-o", str(exe), *libs],
                   timeout=120, cwd=tmp_path)
    assert rc == 0, f"building fuzz_{target} failed:\n{out[-6000:]}"
    corpus = tmp_path / "corpus"
    shutil.copytree(FUZZ / f"corpus_{target}", corpus)
    rc, out = _run([str(exe), "-max_total_time=5", "-timeout=10", "-rss_limit_mb=2048",
                    f"-artifact_prefix={tmp_path}/", str(corpus)],
                   timeout=90, cwd=tmp_path, env=_env())
    assert rc == 0, f"fuzz_{target} found a problem:\n{out[-8000:]}"
    assert re.search(r"Done \d+ runs", out), out[-3000:]
