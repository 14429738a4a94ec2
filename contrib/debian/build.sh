#!/bin/bash
# contrib/debian/build.sh [--deb-version V] [--maintainer 'NAME <ADDRESS>'] [-o DIR]:
# builds the Debian package of conn-daemon with cargo-deb (installed with
# `cargo install cargo-deb --locked` if missing). Before cargo-deb, it generates
# what the package needs and the source tree does not hold as such:
#   target/debian-assets/conn-daemon.service  contrib/systemd's units with the
#   target/debian-assets/conn-daemon.socket   package's paths: /usr/bin/conn-daemon,
#                                             and the docs they cite under
#                                             /usr/share/doc/conn-daemon/docs/
#   target/debian-assets/conn-daemon.8.gz     the man page (contrib/man)
#   target/debian-assets/changelog            contrib/debian/changelog, with an
#                                             entry for V on top when V is not its
#                                             latest version
# The .deb goes into DIR (target/deb by default) beside the packages already
# there: cargo-deb writes into a fresh directory of its own, and build.sh moves
# the result. Not target/debian: cargo-deb deletes every other version of the
# package from there on each build, whatever its -o says. The maintainer is --maintainer, else "$DEBFULLNAME <$DEBEMAIL>"
# (Debian's convention), else Cargo.toml's. The binary says the package version
# (`conn-daemon --version`, the metric conn_daemon_build_info). Prints the path
# of the .deb on its last line.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"
version=
maintainer=
out=target/deb
while [ $# -gt 0 ]; do
  case "$1" in
    --deb-version) version=$2; shift 2;;
    --maintainer) maintainer=$2; shift 2;;
    -o) out=$2; shift 2;;
    *) echo "usage: $0 [--deb-version V] [--maintainer 'NAME <ADDRESS>'] [-o DIR]" >&2; exit 2;;
  esac
done
if [ -z "$maintainer" ] && [ -n "${DEBFULLNAME:-}" ] && [ -n "${DEBEMAIL:-}" ]; then
  maintainer="$DEBFULLNAME <$DEBEMAIL>"
fi
if [ -z "$maintainer" ]; then
  maintainer=$(cargo metadata --format-version 1 --no-deps | python3 -c '
import json, sys
pkg = next(p for p in json.load(sys.stdin)["packages"] if p["name"] == "conn-daemon")
print(pkg["metadata"]["deb"]["maintainer"])')
fi
case "$maintainer" in
  *"<"*@*">") ;;
  *) echo "build.sh: maintainer '$maintainer' is not NAME <ADDRESS>" >&2; exit 2;;
esac
case "$maintainer" in
  *@example.org\>|*@example.com\>|*.example\>)
    echo "build.sh: the Maintainer field is a placeholder ($maintainer): give --maintainer 'NAME <ADDRESS>' (or DEBFULLNAME and DEBEMAIL) for a package others install" >&2;;
esac
if ! cargo deb --version >/dev/null 2>&1; then
  echo "build.sh: installing cargo-deb (cargo install cargo-deb --locked)"
  cargo install cargo-deb --locked
fi
# cargo-deb's target/release/ paths are the real target directory; the
# generated assets are found relative to the package, so keep them in ./target.
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
mkdir -p "$out"
if [ "$(cd "$out" && pwd -P)" = "$(mkdir -p "$target_dir/debian" && cd "$target_dir/debian" && pwd -P)" ]; then
  echo "build.sh: -o $out: cargo-deb deletes other versions of the package from there; give another directory" >&2
  exit 2
fi
crate_version=$(cargo metadata --format-version 1 --no-deps | python3 -c '
import json, sys
print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "conn-daemon"))')
deb_version=${version:-$crate_version-1}
# The binary knows the package version it is built for (build.rs reads
# CONN_DAEMON_PACKAGE): --version and conn_daemon_build_info show it.
CONN_DAEMON_PACKAGE=$deb_version \
  cargo build --release --bin conn-daemon -p conn-daemon -p conn-daemon-man --bin conn-daemon-man
assets=target/debian-assets
mkdir -p "$assets"
# The units as shipped, but for the package's binary, and citing the docs where
# the package installs them. Fails if the service no longer names
# /usr/local/bin/conn-daemon (the sed would silently do nothing).
grep -q '/usr/local/bin/conn-daemon' contrib/systemd/conn-daemon.service
for unit in conn-daemon.service conn-daemon.socket; do
  sed -e 's|/usr/local/bin/conn-daemon|/usr/bin/conn-daemon|g' \
      -e 's|\bdocs/\([a-z-]*\.md\)|/usr/share/doc/conn-daemon/docs/\1|g' \
      "contrib/systemd/$unit" >"$assets/$unit"
  if grep -q /usr/local/ "$assets/$unit"; then
    echo "build.sh: /usr/local/ left in the package's $unit" >&2; exit 1
  fi
  # Every document the unit cites is one the package installs.
  for doc in $(grep -o '/usr/share/doc/conn-daemon/docs/[a-z-]*\.md' "$assets/$unit"); do
    [ -f "docs/${doc##*/}" ] || { echo "build.sh: $unit cites $doc, which is not in docs/" >&2; exit 1; }
  done
done
"$target_dir/release/conn-daemon-man" | gzip -9n >"$assets/conn-daemon.8.gz"

# The changelog: the maintained one, with an entry for this build's version on
# top when it is not the latest (e.g. --deb-version 0.1.0-2 for an upgrade
# test), dated by the commit so that a rebuild is the same package.
latest=$(sed -n '1s/^conn-daemon (\([^)]*\)).*/\1/p' contrib/debian/changelog)
[ -n "$latest" ] || { echo "build.sh: contrib/debian/changelog does not start with 'conn-daemon (VERSION)'" >&2; exit 1; }
if [ "$deb_version" = "$latest" ]; then
  cp contrib/debian/changelog "$assets/changelog"
else
  date=$(date -R -d "@${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}")
  {
    printf 'conn-daemon (%s) unstable; urgency=medium\n\n' "$deb_version"
    printf '  * Build %s of conn-daemon %s (contrib/debian/build.sh).\n\n' "$deb_version" "$crate_version"
    printf ' -- %s  %s\n\n' "$maintainer" "$date"
    cat contrib/debian/changelog
  } >"$assets/changelog"
fi

# cargo-deb writes into a directory of its own; the .deb then joins whatever DIR
# already holds. cargo-deb empties $target_dir/debian of other versions.
mkdir -p target/debian-build
staging=$(mktemp -d target/debian-build/deb.XXXXXX)
trap 'rm -rf "$staging"' EXIT
args=(--no-build -o "$staging" --maintainer "$maintainer")
[ -z "$version" ] || args+=(--deb-version "$version")
built=$(cargo deb "${args[@]}" | tail -n 1)
[ -f "$built" ] || { echo "build.sh: cargo deb made no .deb ($built)" >&2; exit 1; }
mv -f "$built" "$out/"
echo "$out/$(basename "$built")"
