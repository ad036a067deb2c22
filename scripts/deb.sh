#!/usr/bin/env bash
# The Debian package, built with Debian's own tools (dpkg-deb, dpkg-shlibdeps, lintian) rather
# than cargo-deb: nothing to compile or download besides the build itself, and the maintainer
# scripts are plain sh that a Debian administrator can read.
#
#   scripts/deb.sh build   target/debian/presenced_<version>-1_<arch>.deb from a release build
#   scripts/deb.sh check   lintian, then install it with dpkg -i, verify the installed unit with
#                          systemd-analyze, run /usr/bin/presenced, remove and purge it, and check
#                          that nothing of it is left (needs root; CI runs it)
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
revision=1
arch=$(dpkg --print-architecture)
out=target/debian
deb="$out/presenced_${version}-${revision}_${arch}.deb"
log() { printf '\n==> %s\n' "$*" >&2; }

build() {
  scripts/install-deps.sh dpkg-dev
  log "cargo build --release"
  cargo build --release --quiet --bin presenced
  local root="$out/root"
  rm -rf "$root" && mkdir -p "$root/DEBIAN"
  local bin=target/release/presenced

  install -Dm755 "$bin" "$root/usr/bin/presenced"
  strip --strip-unneeded --remove-section=.comment --remove-section=.note "$root/usr/bin/presenced"

  # The units, with the binary where the package puts it.
  for unit in presenced.service presenced@.service; do
    sed 's|/usr/local/bin/presenced|/usr/bin/presenced|' "systemd/$unit" \
      | install -Dm644 /dev/stdin "$root/lib/systemd/system/$unit"
  done
  install -Dm644 systemd/presenced.sysusers "$root/usr/lib/sysusers.d/presenced.conf"
  install -Dm644 systemd/presenced.tmpfiles "$root/usr/lib/tmpfiles.d/presenced.conf"

  # The configuration: the example with every option, but no app yet, so the service cannot
  # start before an operator has configured it. The key goes in /etc/presenced/secret-key,
  # which the unit hands over as a systemd credential.
  sed -e 's/^sdkappid = 1400000000$/sdkappid = 0/' \
      -e 's|^# The app.s SDKAppID (required).$|# The app'"'"'s SDKAppID (required: set it, put the secret key in /etc/presenced/secret-key\n# (mode 600), then: systemctl enable --now presenced).|' \
      config.example.toml | install -Dm640 /dev/stdin "$root/etc/presenced/presenced.toml"
  echo /etc/presenced/presenced.toml >"$root/DEBIAN/conffiles"

  # Manual pages and completions, generated from the command-line definition.
  local man="$root/usr/share/man/man1"
  mkdir -p "$man"
  "$bin" man | gzip -9n >"$man/presenced.1.gz"
  for cmd in run demo sim check-config users history stats migrate replay kafka completions; do
    "$bin" man "$cmd" | gzip -9n >"$man/presenced-$cmd.1.gz"
  done
  "$bin" completions bash | install -Dm644 /dev/stdin "$root/usr/share/bash-completion/completions/presenced"
  "$bin" completions zsh | install -Dm644 /dev/stdin "$root/usr/share/zsh/vendor-completions/_presenced"
  "$bin" completions fish | install -Dm644 /dev/stdin "$root/usr/share/fish/vendor_completions.d/presenced.fish"

  local doc="$root/usr/share/doc/presenced"
  mkdir -p "$doc"
  for f in README.md docs/ANALYSTS.md docs/OPERATIONS.md config.example.toml; do
    gzip -9nc "$f" >"$doc/$(basename "$f").gz"
  done
  cat >"$doc/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: presenced

Files: *
Copyright: 2025-2026 The presenced authors
License: Apache-2.0
 On Debian systems, the full text of the Apache License version 2.0 can be found in
 /usr/share/common-licenses/Apache-2.0.
EOF
  printf 'presenced (%s-%s) unstable; urgency=medium\n\n  * Package built from the presenced repository.\n\n -- presenced maintainers <maintainers@presenced.example.org>  %s\n' \
    "$version" "$revision" "$(date -R -d @"${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct)}")" \
    | gzip -9n >"$doc/changelog.Debian.gz"
  mkdir -p "$root/usr/share/presenced/monitoring"
  install -m644 monitoring/grafana-dashboard.json monitoring/presenced.rules.yml \
    monitoring/presenced.rules.test.yml "$root/usr/share/presenced/monitoring/"
  install -Dm644 /dev/stdin "$root/usr/share/lintian/overrides/presenced" <<'EOF'
# SQLite and librdkafka are compiled into the binary by their Rust crates (rusqlite's "bundled",
# rdkafka's cmake-less build): one version, tested with the daemon, on every distribution.
presenced: embedded-library sqlite [usr/bin/presenced]
# The configuration may hold Kafka passwords or the IM key inline: readable by root and the
# presenced group only, like the secret-key file next to it.
presenced: non-standard-file-perm 0640 != 0644 [etc/presenced/presenced.toml]
EOF

  for script in postinst prerm postrm; do
    install -m755 "packaging/debian/$script" "$root/DEBIAN/$script"
  done

  # Shared-library dependencies as dpkg-shlibdeps computes them for the binary.
  local tmp depends
  tmp=$(mktemp -d)
  mkdir -p "$tmp/debian"
  printf 'Source: presenced\n\nPackage: presenced\nArchitecture: any\n' >"$tmp/debian/control"
  depends=$(cd "$tmp" && dpkg-shlibdeps -O "$OLDPWD/$root/usr/bin/presenced" 2>/dev/null \
    | sed -n 's/^shlibs:Depends=//p')
  rm -rf "$tmp"
  local size
  size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
  cat >"$root/DEBIAN/control" <<EOF
Package: presenced
Version: ${version}-${revision}
Architecture: ${arch}
Maintainer: presenced maintainers <maintainers@presenced.example.org>
Installed-Size: ${size}
Depends: ${depends}, systemd
Section: net
Priority: optional
Homepage: https://presenced.invalid/
Description: watches which accounts of a Tencent Cloud IM app are online
 presenced sweeps a watch list of accounts through Tencent Cloud IM's
 query_online_status API, records every Online, PushOnline and Offline
 transition in a SQLite history that analysts can query, and publishes each
 one as an event to Kafka, at least once or exactly once.
 .
 The service is installed but not started: configure /etc/presenced first.
EOF
  mkdir -p "$out"
  dpkg-deb --root-owner-group --build "$root" "$deb" >/dev/null
  log "built $deb"
  dpkg-deb --contents "$deb" | awk '{print $1, $6}' >&2
}

check() {
  [ -f "$deb" ] || build
  scripts/install-deps.sh lintian
  log "lintian"
  # Errors fail the check; warnings are listed (README, "Installing", explains the one left).
  lintian --fail-on error --suppress-tags-from-file /dev/null "$deb" | tee "$out/lintian.txt" >&2
  log "dpkg -i"
  dpkg -i "$deb"
  id presenced >/dev/null
  [ -d /etc/presenced ] && [ "$(stat -c '%U:%G %a' /etc/presenced)" = "root:presenced 750" ]
  /usr/bin/presenced --version
  systemd-analyze verify /lib/systemd/system/presenced.service
  # Installed but not configured: the configuration is refused with exit 78, as systemd would see.
  set +e
  /usr/bin/presenced check-config --config /etc/presenced/presenced.toml >/dev/null 2>&1
  status=$?
  set -e
  [ "$status" -eq 78 ] || { echo "unconfigured package: expected exit 78, got $status" >&2; exit 1; }
  man -w presenced >/dev/null 2>&1 || [ -f /usr/share/man/man1/presenced.1.gz ]
  log "dpkg -r, dpkg -P"
  dpkg -r presenced
  [ ! -e /usr/bin/presenced ] && [ -e /etc/presenced/presenced.toml ]
  dpkg -P presenced
  [ ! -e /etc/presenced/presenced.toml ]
  if dpkg -s presenced >/dev/null 2>&1; then echo "presenced is still installed" >&2; exit 1; fi
  log "package checked: built, lintian clean of errors, installed, verified, removed, purged"
}

case "${1:-}" in
  build) build ;;
  check) check ;;
  *) echo "usage: scripts/deb.sh build|check" >&2; exit 2 ;;
esac
