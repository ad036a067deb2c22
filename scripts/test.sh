#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine with only the Rust toolchain: installs the
# system packages the build and tests need, fetches and starts the Apache Kafka test brokers
# (scripts/kafka.sh), then runs formatting and lint checks and every test.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*" >&2; }

# A build from scratch, its release build and the brokers' data take about 8 GB. On a full disk
# the linker dies with SIGBUS and a Kafka node whose log directory fails shuts down, neither
# saying why: warn first.
for place in "${CARGO_TARGET_DIR:-target}" "${TMPDIR:-/tmp}"; do
  mkdir -p "$place"
  free_kb=$(df -Pk "$place" | awk 'NR == 2 { print $4 }')
  if [ "${free_kb:-0}" -lt $((8 * 1024 * 1024)) ]; then
    printf 'warning: %s has %s MB free; the build and the test brokers need about 8 GB\n' \
      "$place" "$((free_kb / 1024))" >&2
  fi
done

# --- system packages --------------------------------------------------------------------------
# Besides the build's own: python3 plays the analyst's second process; systemd provides
# systemd-analyze for the unit tests; prometheus provides promtool for the monitoring kit's
# tests; Java, Maven and openssl fetch and run the Kafka brokers; nginx runs the TLS proxy of
# docs/OPERATIONS.md in front of the callback endpoint.
scripts/install-deps.sh python3 systemd openssl prometheus nginx
command -v java >/dev/null 2>&1 || scripts/install-deps.sh openjdk-17-jre-headless
command -v mvn >/dev/null 2>&1 || scripts/install-deps.sh maven

# --- the test brokers: Apache Kafka, one node and a three-node cluster ---------------------------
# Started in the background while the code builds; the first run downloads about 55 MB of jars.
scripts/kafka.sh fetch
kafka_dir=$(mktemp -d)
trap 'scripts/kafka.sh stop "$kafka_dir/single" >/dev/null 2>&1 || true
      scripts/kafka.sh stop "$kafka_dir/cluster" >/dev/null 2>&1 || true
      rm -rf "$kafka_dir"' EXIT
log "starting Apache Kafka: one node and a three-node cluster (logs in $kafka_dir)"
scripts/kafka.sh start "$kafka_dir/single" 1 >"$kafka_dir/single.log" 2>&1 &
single_pid=$!
scripts/kafka.sh start "$kafka_dir/cluster" 3 >"$kafka_dir/cluster.log" 2>&1 &
cluster_pid=$!
export PRESENCED_TEST_KAFKA_DIR="$kafka_dir/single"
export PRESENCED_TEST_KAFKA_CLUSTER_DIR="$kafka_dir/cluster"

# --- checks ---------------------------------------------------------------------------------------
log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --quiet -- -D warnings
log "building the tests"
cargo test --no-run --quiet

wait "$single_pid" || { cat "$kafka_dir/single.log" >&2; echo "the Kafka test broker did not start" >&2; exit 1; }
wait "$cluster_pid" || { cat "$kafka_dir/cluster.log" >&2; echo "the Kafka test cluster did not start" >&2; exit 1; }
# shellcheck disable=SC1091
. "$kafka_dir/single/env"
export PRESENCED_TEST_KAFKA="$KAFKA_BOOTSTRAP"

# --- tests --------------------------------------------------------------------------------------
log "cargo test"
results="$kafka_dir/test-output.txt"
set +e
cargo test --no-fail-fast 2>&1 | tee "$results"
status=${PIPESTATUS[0]}
set -e
# --- the Debian package: built from a release build, linted, installed, verified, removed --------
package="skipped (needs root)"
if [ "$(id -u)" -eq 0 ]; then
  log "the Debian package (scripts/deb.sh)"
  if scripts/deb.sh build && scripts/deb.sh check; then
    package="ok"
  else
    package="FAILED"
    status=1
  fi
fi

# One closing line for the whole suite (cargo prints one per test binary).
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' \
  "$results"
echo "debian package: $package"
exit "$status"
