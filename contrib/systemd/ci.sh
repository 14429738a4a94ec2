#!/bin/bash
# contrib/systemd/ci.sh: the systemd and Debian package checks, for .ci/run.
# Installs what they need (Debian packages, cargo-deb), builds the release
# binary and two builds of the package (VERSION-1 and VERSION-2, for the
# upgrade), then runs check.sh with both. Exits 0 with a loud SKIPPED banner
# when this machine cannot boot systemd in namespaces (not root, no cgroup2,
# namespaces refused); non-zero when any check fails.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"

skipped() {
  echo "###########################################################################"
  echo "## SKIPPED: contrib/systemd/check.sh did not run: systemd cannot boot here:"
  echo "##   $*"
  echo "## Nothing of the units or of the Debian package was checked."
  echo "###########################################################################"
  exit 0
}

[ "$(id -u)" = 0 ] || skipped "not root"
missing=()
[ -x /lib/systemd/systemd ] || missing+=(systemd)
command -v ss >/dev/null || missing+=(iproute2)
command -v pgrep >/dev/null || missing+=(procps)
[ -x /usr/bin/python3 ] || missing+=(python3)
command -v dpkg-deb >/dev/null || missing+=(dpkg)
command -v deb-systemd-helper >/dev/null || missing+=(init-system-helpers)
if [ ${#missing[@]} -gt 0 ]; then
  command -v apt-get >/dev/null || skipped "no apt-get to install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# shellcheck source=contrib/systemd/sandbox.sh
. contrib/systemd/sandbox.sh
why=$(sb_cannot) || skipped "$why"

if ! cargo deb --version >/dev/null 2>&1; then
  echo "ci.sh: installing cargo-deb"
  cargo install cargo-deb --locked
fi
version=$(cargo metadata --format-version 1 --no-deps \
  | python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "conn-daemon"))')
debs=target/systemd-check-debs
rm -rf "$debs"
old=$(contrib/debian/build.sh --deb-version "$version-1" -o "$debs/old" | tail -n 1)
new=$(contrib/debian/build.sh --deb-version "$version-2" -o "$debs/new" | tail -n 1)

rc=0
contrib/systemd/check.sh --binary target/release/conn-daemon --deb "$old" "$new" || rc=$?
[ "$rc" != 77 ] || skipped "the sandbox did not boot (see above)"
exit "$rc"
