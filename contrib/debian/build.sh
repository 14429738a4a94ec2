#!/bin/bash
# contrib/debian/build.sh [--deb-version V] [-o DIR]: builds the Debian package
# of conn-daemon with cargo-deb (installed with `cargo install cargo-deb
# --locked` if missing). Before cargo-deb, it generates what the package needs
# and the source tree does not hold as such:
#   target/debian-assets/conn-daemon.service  contrib/systemd's unit with the
#                                             package's path, /usr/bin/conn-daemon
#   target/debian-assets/conn-daemon.8.gz     the man page (contrib/man)
# The binary says the package version (`conn-daemon --version`, the metric
# conn_daemon_build_info). Prints the path of the .deb on its last line.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"
version=
out=target/debian
while [ $# -gt 0 ]; do
  case "$1" in
    --deb-version) version=$2; shift 2;;
    -o) out=$2; shift 2;;
    *) echo "usage: $0 [--deb-version V] [-o DIR]" >&2; exit 2;;
  esac
done
if ! cargo deb --version >/dev/null 2>&1; then
  echo "build.sh: installing cargo-deb (cargo install cargo-deb --locked)"
  cargo install cargo-deb --locked
fi
# cargo-deb's target/release/ paths are the real target directory; the
# generated assets are found relative to the package, so keep them in ./target.
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
# The package version, which --version and conn_daemon_build_info show
# (build.rs reads CONN_DAEMON_PACKAGE): --deb-version, else cargo-deb's
# default, the crate's version with revision 1.
crate_version=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "conn-daemon"))')
CONN_DAEMON_PACKAGE=${version:-$crate_version-1} \
  cargo build --release --bin conn-daemon -p conn-daemon -p conn-daemon-man --bin conn-daemon-man
mkdir -p target/debian-assets
# The unit as shipped, but for the package's binary. Fails if the unit no
# longer names /usr/local/bin/conn-daemon (the sed would silently do nothing).
grep -q '/usr/local/bin/conn-daemon' contrib/systemd/conn-daemon.service
sed 's|/usr/local/bin/conn-daemon|/usr/bin/conn-daemon|g' contrib/systemd/conn-daemon.service \
  >target/debian-assets/conn-daemon.service
if grep -q /usr/local/ target/debian-assets/conn-daemon.service; then
  echo "build.sh: /usr/local/ left in the package's unit" >&2; exit 1
fi
"$target_dir/release/conn-daemon-man" | gzip -9n >target/debian-assets/conn-daemon.8.gz
mkdir -p "$out"
args=(--no-build -o "$out")
[ -z "$version" ] || args+=(--deb-version "$version")
deb=$(cargo deb "${args[@]}" | tail -n 1)
echo "$deb"
