#!/usr/bin/env bash
# Every benchmark, with its output kept in target/bench-results.txt. Starts a local tansu broker
# for the Kafka scenario (install it first with scripts/test.sh or `cargo install tansu`).
# Usage: scripts/bench.sh [SCENARIO ...]   (client-rate client-ceiling store kafka e2e import diff publish migrate)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
out=target/bench-results.txt
mkdir -p target
scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(client-rate client-ceiling store kafka e2e import diff publish migrate)

cargo build --release --quiet
cargo bench --no-run --quiet --bench throughput --bench diff --bench publish

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
tansu broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
  --storage-engine memory://tansu/ >/dev/null 2>&1 &
broker=$!
export PRESENCED_BENCH_KAFKA_PID=$broker
tmp=$(mktemp -d)
trap 'kill $broker 2>/dev/null || true; rm -rf "$tmp"' EXIT
export PRESENCED_BENCH_KAFKA="127.0.0.1:$port"
export PRESENCED_TANSU="$(command -v tansu)"

{
  echo "# $(date -u +%FT%TZ) on $(nproc) cores, $(git rev-parse --short HEAD)"
  for s in "${scenarios[@]}"; do
    case "$s" in
      diff | publish) cargo bench --quiet --bench "$s" 2>&1 | grep -E '^[a-z_]+/|time:|thrpt:' ;;
      migrate) echo; echo "## migrate"; python3 scripts/bench-migration.py ;;
      import)
        echo; echo "## import"
        seq -f 'user%.0f' 0 999999 > "$tmp/ids.txt"
        target/release/presenced users --db "$tmp/import.db" import "$tmp/ids.txt" 2>/dev/null
        ;;
      *) cargo bench --quiet --bench throughput -- "$s" ;;
    esac
  done
} 2>&1 | tee "$out"
