#!/usr/bin/env bash
# Set up everything Corsac needs to build, run and test on a fresh Debian
# machine: the Debian packages (apt), a virtualenv in .venv with the build and
# test tools (PyPI), and Corsac itself installed into it (editable: the C core
# rebuilds on import after a change).  Safe to run again: it skips what is there.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: compilers for the core, clang + its runtime for the
# sanitizer and libFuzzer runs, zlib and OpenSSL headers (WebSocket
# compression and handshake; TLS), libnghttp2 (HTTP/2), curl and nghttp2's
# client tools (nghttp, h2load) for the client tests.
APT_PKGS=(gcc clang libclang-rt-14-dev pkg-config zlib1g-dev libssl-dev libnghttp2-dev nghttp2-client curl make)
[ "${1:-}" = "--bench" ] && APT_PKGS+=(wrk nginx-light testssl.sh)
missing=()
for p in "${APT_PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "setup: installing Debian packages: ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PY="${PYTHON:-python3}"
# Debian's own python3 needs its venv and header packages (pyenv builds have both)
if ! "$PY" -c "import ensurepip, sysconfig, os, sys; sys.exit(not os.path.exists(sysconfig.get_paths()['include'] + '/Python.h'))" 2>/dev/null; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "setup: installing python3-venv and python3-dev"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv python3-dev >/dev/null
fi
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv"
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check \
    "meson-python>=0.15" "meson>=1.1" ninja \
    pytest pytest-timeout httpx requests flask django h2 hyperframe hpack trustme \
    uvloop starlette fastapi python-multipart quart websockets kosoku
if [ "${1:-}" = "--bench" ]; then
    .venv/bin/python -m pip install -q --disable-pip-version-check gunicorn granian \
        "uvicorn[standard]" hypercorn
fi
echo "setup: building and installing corsac into .venv"
.venv/bin/python -m pip install -q --disable-pip-version-check --no-build-isolation -e .
.venv/bin/python -m corsac --version
