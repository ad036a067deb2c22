#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine with only the Rust toolchain: installs the
# system packages the build and tests need, installs and starts the test Kafka broker (tansu),
# then runs formatting and lint checks and every test.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*" >&2; }

# --- system packages --------------------------------------------------------------------------
# Besides the build's own: python3 plays the analyst's second process; systemd provides
# systemd-analyze for the unit tests.
scripts/install-deps.sh python3 systemd

# --- the test broker ----------------------------------------------------------------------------
TANSU_VERSION=0.6.0
if ! command -v tansu >/dev/null 2>&1 || ! tansu --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
  log "installing tansu $TANSU_VERSION (about 8 minutes the first time)"
  cargo install tansu --version "$TANSU_VERSION" --features libsql,dynostore --locked --quiet
fi
export PATH="$HOME/.cargo/bin:$PATH"
export PRESENCED_TANSU="$(command -v tansu)"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
broker_dir=$(mktemp -d)
log "starting tansu on 127.0.0.1:$port"
tansu broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
  --storage-engine memory://tansu/ >"$broker_dir/broker.log" 2>&1 &
broker_pid=$!
trap 'kill "$broker_pid" 2>/dev/null || true; rm -rf "$broker_dir"' EXIT
for _ in $(seq 1 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done
(exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || { cat "$broker_dir/broker.log"; echo "tansu did not start" >&2; exit 1; }
export PRESENCED_TEST_KAFKA="127.0.0.1:$port"

# --- checks and tests ---------------------------------------------------------------------------
log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --quiet -- -D warnings
log "cargo test"
results="$broker_dir/test-output.txt"
set +e
cargo test --no-fail-fast 2>&1 | tee "$results"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole suite (cargo prints one per test binary).
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' \
  "$results"
exit "$status"
