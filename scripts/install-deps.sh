#!/usr/bin/env bash
# Installs the Debian packages that building presenced needs (gcc and make for the bundled
# librdkafka and SQLite, libssl-dev for TLS to Kafka and IM), plus any extra packages named on
# the command line. Does nothing for packages already installed.
set -euo pipefail
need=()
for pkg in build-essential pkg-config libssl-dev "$@"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if ((${#need[@]})); then
  printf '\n==> installing %s\n' "${need[*]}" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
