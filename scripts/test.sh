#!/usr/bin/env bash
# Install everything (venv, etcd, helm, kubectl, linters) and run the whole test suite.
# This is the README's second command, and exactly what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh test
bash scripts/install-tools.sh
# The properties format is checked against the real java.util.Properties.
if ! command -v java >/dev/null; then
  apt-get update -qq && apt-get install -y -qq default-jre-headless >/dev/null
fi
export PATH="$PWD/.tools/bin:$PWD/.venv/bin:$PATH"
echo "== lint"
ruff check sidecar tests benchmarks
ruff format --check sidecar tests benchmarks
hadolint Dockerfile
echo "== tests"
exec pytest "$@"
