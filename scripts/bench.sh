#!/usr/bin/env bash
# Every benchmark, with its output kept in target/bench-results.txt. Starts a local Apache Kafka
# broker (scripts/kafka.sh) for the Kafka scenarios.
# Usage: scripts/bench.sh [SCENARIO ...]   (client-rate client-ceiling store prune kafka kafka-memory e2e import diff publish migrate detection pacing hint-flood schedule adaptive standby)
# standby starts a three-node cluster; STANDBY_KILLS (50), STANDBY_EVENTS_PER_SEC (5000) and
# STANDBY_SECS (30) size it.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
out=target/bench-results.txt
mkdir -p target
scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(client-rate client-ceiling store prune kafka kafka-memory e2e import diff publish migrate detection pacing hint-flood schedule adaptive)

cargo build --release --quiet
cargo bench --no-run --quiet --bench throughput --bench diff --bench publish --bench detection --bench edges --bench schedule --bench adaptive --bench standby

tmp=$(mktemp -d)
trap 'scripts/kafka.sh stop "$tmp/kafka" >/dev/null 2>&1 || true; scripts/kafka.sh stop "$tmp/cluster" >/dev/null 2>&1 || true; rm -rf "$tmp"' EXIT
if printf '%s\n' "${scenarios[@]}" | grep -qE '^kafka(-memory)?$'; then
  scripts/kafka.sh start "$tmp/kafka" 1
  # shellcheck disable=SC1091
  . "$tmp/kafka/env"
  export PRESENCED_BENCH_KAFKA="$KAFKA_BOOTSTRAP"
  export PRESENCED_BENCH_KAFKA_PID="$(cat "$tmp/kafka/node1/pid")"
  export PRESENCED_BENCH_KAFKA_VERSION="$KAFKA_VERSION"
fi
if printf '%s\n' "${scenarios[@]}" | grep -qx standby; then
  scripts/kafka.sh start "$tmp/cluster" 3
  export PRESENCED_BENCH_KAFKA_CLUSTER="$(. "$tmp/cluster/env"; echo "$KAFKA_BOOTSTRAP")"
  export PRESENCED_BENCH_KAFKA_VERSION="$(. "$tmp/cluster/env"; echo "$KAFKA_VERSION")"
fi

{
  echo "# $(date -u +%FT%TZ) on $(nproc) cores, $(git rev-parse --short HEAD)${PRESENCED_BENCH_KAFKA_VERSION:+, Apache Kafka $PRESENCED_BENCH_KAFKA_VERSION}"
  for s in "${scenarios[@]}"; do
    case "$s" in
      diff | publish | schedule) cargo bench --quiet --bench "$s" 2>&1 | grep -E '^[a-z_-]+/|time:|thrpt:|bytes per' ;;
      migrate) echo; echo "## migrate"; python3 scripts/bench-migration.py ;;
      detection) echo; echo "## detection"; cargo bench --quiet --bench detection ;;
      adaptive) echo; echo "## adaptive"; cargo bench --quiet --bench adaptive ;;
      standby) echo; cargo bench --quiet --bench standby ;;
      pacing | hint-flood) cargo bench --quiet --bench edges -- "$s" ;;
      import)
        echo; echo "## import"
        seq -f 'user%.0f' 0 999999 > "$tmp/ids.txt"
        target/release/presenced users --db "$tmp/import.db" import "$tmp/ids.txt" 2>/dev/null
        ;;
      *) cargo bench --quiet --bench throughput -- "$s" ;;
    esac
  done
} 2>&1 | tee "$out"
