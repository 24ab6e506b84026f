# The two commands the README starts with, plus helpers.
.PHONY: run test setup bench clean conformance

setup:
	./scripts/setup.sh

# Serve the bundled example app on http://127.0.0.1:8000
run: setup
	.venv/bin/corsac examples.hello:app --bind 127.0.0.1:8000

# The whole suite: C unit tests (gcc, clang+ASan/UBSan), fuzzers, then the
# server tests against the real corsac process.
test: setup
	.venv/bin/python -m pytest tests/

# The whole Autobahn WebSocket suite (cases 1-13, kosoku as the fuzzing client)
# against corsac serving tests/apps/ws_echo.py; reports in reports/autobahn/corsac/.
conformance: setup
	.venv/bin/python scripts/autobahn.py --cases 1-13

bench:
	./scripts/setup.sh --bench
	.venv/bin/python bench/run.py

clean:
	rm -rf build builddir .venv
