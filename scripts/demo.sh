#!/usr/bin/env bash
# Install everything, start a local etcd with demo keys, and run the sidecar against it.
# This is the README's first command. Stop it with Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh etcd
export PATH="$PWD/.venv/bin:$PATH"
demo="$PWD/demo"
mkdir -p "$demo/config"
client_url="http://127.0.0.1:${DEMO_ETCD_PORT:-2379}"
peer_url="http://127.0.0.1:${DEMO_ETCD_PEER_PORT:-2380}"

etcd --name demo --data-dir "$demo/etcd-data" \
  --listen-client-urls "$client_url" --advertise-client-urls "$client_url" \
  --listen-peer-urls "$peer_url" --initial-advertise-peer-urls "$peer_url" \
  --initial-cluster "demo=$peer_url" >"$demo/etcd.log" 2>&1 &
etcd_pid=$!
trap 'kill "$etcd_pid" 2>/dev/null; wait "$etcd_pid" 2>/dev/null || true' EXIT

ctl() { etcdctl --endpoints "$client_url" "$@"; }
for _ in $(seq 1 100); do
  ctl endpoint health >/dev/null 2>&1 && break
  kill -0 "$etcd_pid" 2>/dev/null || { echo "etcd did not start; see $demo/etcd.log" >&2; exit 1; }
  sleep 0.1
done
ctl put /demo/app/greeting "hello from etcd" >/dev/null
ctl put /demo/app/db/host "db.internal" >/dev/null
ctl put /demo/app/db/password "not-shown-by-lookups" >/dev/null

cat <<MSG

  etcd is on $client_url; the sidecar writes $demo/config/config.json
  In another terminal:
    watch -n0.5 cat $demo/config/config.json
    $PWD/.venv/bin/etcdctl --endpoints $client_url put /demo/app/greeting "changed"
    curl -s http://127.0.0.1:9180/v1/keys ; curl -s http://127.0.0.1:9180/metrics
    $PWD/.venv/bin/etcd-config-sidecar get /demo/app/greeting

MSG
etcd-config-sidecar run --etcd-endpoints "$client_url" --prefix /demo/app/ \
  --output "$demo/config/config.json" --listen 127.0.0.1:9180 --log-format text
