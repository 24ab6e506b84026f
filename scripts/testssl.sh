#!/usr/bin/env bash
# Scan Corsac's TLS with testssl.sh: protocols (-p), cipher categories (-s) and
# vulnerabilities (-U), then print a short summary and fail (exit 1) when a
# weak protocol or cipher category is offered or a check flags the server.
#
#   scripts/testssl.sh                  # ECDSA and RSA certificates, one scan each
#   scripts/testssl.sh --key-type rsa   # one scan (ecdsa | rsa | both)
#   scripts/testssl.sh --keep DIR       # keep the JSON, the logs and the certificates in DIR
#   scripts/testssl.sh -- -S -P         # extra testssl options after --
#
# Run from anywhere with the project's .venv set up (scripts/setup.sh): Corsac
# runs as `.venv/bin/python -m corsac examples.hello:app` with one worker on a
# free port of 127.0.0.1 and its default TLS settings, behind a throw-away
# certificate (trustme, or the openssl command when trustme is missing).
# testssl is Debian's testssl.sh (`apt-get install testssl.sh`: /usr/bin/testssl)
# or $TESTSSL. A scan takes about 30 s; each is bounded by $TESTSSL_TIMEOUT
# seconds (default 900).
#
# CORSAC_* environment variables reach the server, e.g. to scan other settings:
#   CORSAC_SSL_CIPHERS='ECDHE+AESGCM:AES128-SHA' scripts/testssl.sh --key-type rsa
#
# Exit status: 0 all good, 1 something flagged, 2 could not run.
set -euo pipefail
cd "$(dirname "$0")/.."

KEY_TYPES="ecdsa rsa"
KEEP=""
EXTRA=()
while [ $# -gt 0 ]; do
    case "$1" in
        --key-type) [ $# -ge 2 ] || { echo "testssl.sh: --key-type needs a value" >&2; exit 2; }
                    case "$2" in ecdsa|rsa) KEY_TYPES="$2" ;; both) KEY_TYPES="ecdsa rsa" ;;
                        *) echo "testssl.sh: --key-type ecdsa|rsa|both" >&2; exit 2 ;; esac
                    shift 2 ;;
        --keep) [ $# -ge 2 ] || { echo "testssl.sh: --keep needs a directory" >&2; exit 2; }
                KEEP="$2"; shift 2 ;;
        --) shift; EXTRA=("$@"); break ;;
        -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "testssl.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

PY=.venv/bin/python
if [ ! -x "$PY" ]; then
    echo "testssl.sh: $PY not found: run scripts/setup.sh first" >&2
    exit 2
fi
TESTSSL="${TESTSSL:-$(command -v testssl || command -v testssl.sh || true)}"
if [ -z "$TESTSSL" ]; then
    echo "testssl.sh: testssl not found (apt-get install testssl.sh, or set TESTSSL)" >&2
    exit 2
fi
command -v curl >/dev/null || { echo "testssl.sh: curl not found" >&2; exit 2; }

if [ -n "$KEEP" ]; then
    mkdir -p "$KEEP"
    WORK="$(cd "$KEEP" && pwd)"
else
    WORK="$(mktemp -d "${TMPDIR:-/tmp}/corsac-testssl.XXXXXX")"
fi
SERVER_PID=""
stop_server() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    SERVER_PID=""
}
cleanup() {
    stop_server
    [ -n "$KEEP" ] || rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# make_cert DIR KEYTYPE: DIR/cert.pem (leaf), DIR/key.pem, DIR/ca.pem
make_cert() {
    local dir="$1" kt="$2"
    mkdir -p "$dir"
    if "$PY" -c "import trustme" 2>/dev/null; then
        "$PY" - "$dir" "$kt" <<'EOF'
import sys, trustme
out, kt = sys.argv[1], sys.argv[2]
key_type = trustme.KeyType.RSA if kt == "rsa" else trustme.KeyType.ECDSA
ca = trustme.CA(key_type=key_type)
leaf = ca.issue_cert("127.0.0.1", "localhost", key_type=key_type)
with open(out + "/cert.pem", "wb") as f:
    for blob in leaf.cert_chain_pems:
        f.write(blob.bytes())
leaf.private_key_pem.write_to_path(out + "/key.pem")
ca.cert_pem.write_to_path(out + "/ca.pem")
EOF
        echo "trustme"
        return
    fi
    local newkey
    if [ "$kt" = rsa ]; then newkey=(-newkey rsa:2048)
    else newkey=(-newkey ec -pkeyopt ec_paramgen_curve:P-256); fi
    (
        cd "$dir"
        openssl req -x509 -nodes -days 2 -subj "/CN=corsac testssl CA" "${newkey[@]}" \
            -keyout ca-key.pem -out ca.pem 2>/dev/null
        openssl req -new -nodes -subj "/CN=localhost" "${newkey[@]}" \
            -keyout key.pem -out leaf.csr 2>/dev/null
        printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > ext.cnf
        openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial \
            -days 2 -extfile ext.cnf -out cert.pem 2>/dev/null
    )
    echo "openssl"
}

free_port() {
    "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start_server DIR PORT: corsac with DIR's certificate, waits until it answers over https
start_server() {
    local dir="$1" port="$2"
    "$PY" -m corsac examples.hello:app --workers 1 --bind "127.0.0.1:$port" \
        --ssl-certfile "$dir/cert.pem" --ssl-keyfile "$dir/key.pem" \
        --log-level info > "$dir/corsac.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 300); do
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            echo "testssl.sh: corsac exited during start-up:" >&2
            tail -n 20 "$dir/corsac.log" >&2
            return 1
        fi
        if curl -s --max-time 2 --cacert "$dir/ca.pem" "https://127.0.0.1:$port/" 2>/dev/null \
                | grep -q "Hello, World!"; then
            return 0
        fi
        sleep 0.1
    done
    echo "testssl.sh: corsac did not answer over https within 30 s:" >&2
    tail -n 20 "$dir/corsac.log" >&2
    return 1
}

# summarize JSON KEYTYPE: prints the summary; exit status 1 when something is flagged
summarize() {
    "$PY" - "$1" "$2" <<'EOF'
import json, sys

path, key_type = sys.argv[1], sys.argv[2]
with open(path) as f:
    data = json.load(f)
if isinstance(data, dict):  # --jsonfile-pretty layout, in case it is ever used
    data = [f for s in data.get("scanResult", []) for v in s.values()
            if isinstance(v, list) for f in v]
by_id = {}
for e in data:
    by_id.setdefault(e.get("id", ""), []).append(e)

def find(i):
    es = by_id.get(i)
    return es[0] if es else None

problems, warnings = [], []
BAD_SEVERITY = ("MEDIUM", "HIGH", "CRITICAL")

print("protocols:")
offered = []
for pid, name, weak in (("SSLv2", "SSLv2", True), ("SSLv3", "SSLv3", True),
                        ("TLS1", "TLS 1.0", True), ("TLS1_1", "TLS 1.1", True),
                        ("TLS1_2", "TLS 1.2", False), ("TLS1_3", "TLS 1.3", False)):
    e = find(pid)
    if e is None:
        problems.append("%s: no result from testssl" % name)
        print("  %-8s ?" % name)
        continue
    finding = e["finding"]
    is_offered = finding.startswith("offered") or (
        "offered" in finding and "not offered" not in finding)
    if is_offered:
        offered.append(name)
    print("  %-8s %s" % (name, finding))
    if weak and is_offered:
        problems.append("%s is offered" % name)
    if not weak and not is_offered:
        problems.append("%s is not offered (%s)" % (name, finding))
for pid in ("NPN", "ALPN_HTTP2", "ALPN"):
    e = find(pid)
    if e:
        print("  %-8s %s" % (pid.replace("_HTTP2", "/h2"), e["finding"]))

print("cipher categories:")
for pid, name in (("cipherlist_NULL", "NULL"), ("cipherlist_aNULL", "anonymous (aNULL)"),
                  ("cipherlist_EXPORT", "EXPORT"), ("cipherlist_LOW", "LOW (64-bit, DES, RC2/4)"),
                  ("cipherlist_3DES_IDEA", "3DES/IDEA"),
                  ("cipherlist_AVERAGE", "obsolete CBC"),
                  ("cipherlist_OBSOLETED", "obsolete CBC"),
                  ("cipherlist_STRONG", "strong (AEAD)"),
                  ("cipherlist_GOOD", "strong (AEAD)")):
    e = find(pid)
    if e is None:
        continue
    finding = e["finding"]
    print("  %-26s %s" % (name, finding))
    strong = pid in ("cipherlist_STRONG", "cipherlist_GOOD")
    if not strong and finding != "not offered":
        problems.append("weak cipher category offered: %s (%s)" % (name, finding))
    if strong and "offered" in finding and "not offered" in finding:
        problems.append("no strong (AEAD) cipher offered")
if not any(i.startswith("cipherlist_") for i in by_id):
    problems.append("no cipher category results from testssl")

VULNS = ("heartbleed", "CCS", "ticketbleed", "ROBOT", "secure_renego",
         "secure_client_renego", "CRIME_TLS", "BREACH", "POODLE_SSL", "fallback_SCSV",
         "SWEET32", "FREAK", "DROWN", "DROWN_hint", "LOGJAM", "LOGJAM-common_primes",
         "BEAST", "BEAST_CBC_TLS1", "LUCKY13", "winshock", "RC4", "GREASE")
print("vulnerabilities:")
seen = 0
for e in data:
    i = e.get("id", "")
    if i not in VULNS and not i.startswith(("BEAST", "LOGJAM", "DROWN")):
        continue
    seen += 1
    sev = e.get("severity", "?")
    print("  %-22s %-8s %s" % (i, sev, e["finding"]))
    fl = e["finding"].lower()
    vulnerable = ("vulnerable" in fl and "not vulnerable" not in fl) or "potentially" in fl
    if sev in BAD_SEVERITY or vulnerable:
        problems.append("%s: %s (%s)" % (i, e["finding"], sev))
    elif sev in ("LOW", "WARN"):
        warnings.append("%s: %s (%s)" % (i, e["finding"], sev))
if not seen:
    problems.append("no vulnerability results from testssl")

# Anything else testssl rates MEDIUM or worse, or could not test (scan errors).
for e in data:
    i, sev = e.get("id", ""), e.get("severity", "")
    if i in VULNS or i.startswith(("cipherlist_", "BEAST", "LOGJAM", "DROWN")):
        continue
    if i in ("SSLv2", "SSLv3", "TLS1", "TLS1_1", "TLS1_2", "TLS1_3"):
        continue
    if sev in BAD_SEVERITY:
        problems.append("%s: %s (%s)" % (i, e["finding"], sev))
    elif sev == "WARN" or i in ("scanProblem", "engine_problem"):
        warnings.append("%s: %s (%s)" % (i, e["finding"], sev))

scan = find("scanTime")
print("summary (%s certificate%s): offered %s" % (
    key_type, ", scan %ss" % scan["finding"] if scan else "", ", ".join(offered) or "nothing"))
for w in warnings:
    print("  warning: " + w)
for p in problems:
    print("  FLAGGED: " + p)
if not problems:
    print("  OK: no weak protocol, no weak cipher category, no vulnerability flagged")
sys.exit(1 if problems else 0)
EOF
}

TIMEOUT="${TESTSSL_TIMEOUT:-900}"
status=0
for kt in $KEY_TYPES; do
    dir="$WORK/$kt"
    made_by="$(make_cert "$dir" "$kt")"
    port="$(free_port)"
    echo "== testssl against corsac on https://127.0.0.1:$port ($kt certificate from $made_by)"
    start_server "$dir" "$port" || exit 2
    json="$dir/testssl.json"
    rm -f "$json"
    rc=0
    # --warnings off: no interactive questions; --ip: no DNS; output kept in the work dir
    timeout "$TIMEOUT" "$TESTSSL" --quiet --color 0 --warnings off --ip 127.0.0.1 \
        --openssl-timeout 10 -p -s -U --jsonfile "$json" ${EXTRA[@]+"${EXTRA[@]}"} \
        "127.0.0.1:$port" > "$dir/testssl.txt" 2>&1 || rc=$?
    stop_server
    if [ ! -s "$json" ]; then
        echo "testssl.sh: testssl produced no JSON (exit status $rc); its output:" >&2
        tail -n 30 "$dir/testssl.txt" >&2
        exit 2
    fi
    if [ "$rc" -eq 124 ]; then
        echo "testssl.sh: testssl timed out after ${TIMEOUT}s; summarizing what it wrote" >&2
    fi
    summarize "$json" "$kt" || status=1
    echo
done
if [ -n "$KEEP" ]; then
    echo "kept: $WORK (per key type: testssl.json, testssl.txt, corsac.log, certificates)"
fi
if [ "$status" -ne 0 ]; then
    echo "testssl.sh: FLAGGED (see above)"
else
    echo "testssl.sh: all scans OK"
fi
exit "$status"
