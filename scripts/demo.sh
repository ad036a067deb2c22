#!/usr/bin/env bash
# The embedded default: the built-in IM simulator with 10,000 churning accounts, a local SQLite
# file (presenced-demo.db) and every change printed as it happens. Options go to `presenced demo`
# (see --help), e.g. scripts/demo.sh --accounts 100000 --brokers 127.0.0.1:9092
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
exec cargo run --release --quiet -- demo "$@"
