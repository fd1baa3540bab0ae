#!/usr/bin/env bash
# Install what the benchmarks need and run them (docs/performance.md). Takes about 10 minutes on
# 2 cores; arguments go to benchmarks/run.py, e.g. `bash scripts/bench.sh --quick` for a smoke run.
# A full run rewrites benchmarks/results.json, benchmarks/latency.png and the results section of
# docs/performance.md.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh "etcd,bench"
# The plot needs matplotlib (the `bench` extra); install it directly where the extra is missing.
if ! .venv/bin/python -c 'import matplotlib' 2>/dev/null; then
  .venv/bin/python -m pip install -q --disable-pip-version-check "matplotlib>=3.8"
fi
# HTTP load comes from wrk (a Debian package) when it can be installed, else from a small asyncio
# client in benchmarks/httpload.py (which then shares the two cores less politely).
if ! command -v wrk >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && apt-get install -y -qq wrk >/dev/null) \
    || echo "bench: could not install wrk; using the asyncio load generator" >&2
fi
exec .venv/bin/python benchmarks/run.py "$@"
