#!/usr/bin/env bash
# Builds the upstream C++ server ("server-demo", the reference conn-daemon) from a
# source checkout you already have, twice:
#   OUT/debug    CMake Debug, unpatched: what upstream's own build.sh makes;
#   OUT/release  CMake Release at -O2, from a patched copy (OUT/src-O2): the two
#                missing `return`s (bench/reference-O2.patch, docs/protocol.md
#                D10) crash an optimised build on the slow path.
# The checkout itself is never written to. Nothing is fetched except the Debian
# packages below, with apt-get, when they are missing.
#
# Usage: bench/build-reference.sh SRC [OUT]    (OUT defaults to ./reference-build)
# Without SRC it prints one line saying it skipped, and exits 0.
#
# Then benchmark against it (docs/performance.md, "Against your C++ build"):
#   target/release/conn-bench --server cpp='OUT/release/server-demo -A 1 -p {port}' ...
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
patch_file=$here/reference-O2.patch
# What the upstream tree needs: CMake and make; g++ (C++11); libev; AutoOpts, whose
# code generator (autogen) turns main_opts.def into main_opts.c/.h and whose
# library (libopts) parses the command line; patch for the -O2 fix.
packages=(cmake make g++ libev-dev autogen libopts25-dev patch)

say() { printf 'build-reference: %s\n' "$*"; }
die() { printf 'build-reference: %s\n' "$*" >&2; exit "${2:-1}"; }

if [ $# -lt 1 ] || [ -z "$1" ]; then
    say "skipped: no upstream source given (usage: bench/build-reference.sh SRC [OUT])"
    exit 0
fi
src=$(cd "$1" 2>/dev/null && pwd) || die "$1: no such directory"
out=${2:-$PWD/reference-build}
if [ ! -f "$src/CMakeLists.txt" ] || [ ! -f "$src/main.cc" ]; then
    die "$src does not look like a server-demo checkout (no CMakeLists.txt and main.cc)" 2
fi

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    "${sudo[@]}" apt-get install -y "${missing[@]}"
fi

out=$(realpath -m "$out")
case "$out/" in
    "$src"/*) die "OUT ($out) must not be inside SRC: the checkout stays untouched" 2 ;;
esac
mkdir -p "$out"
jobs=$(nproc 2>/dev/null || echo 2)

# The executable's name is upstream's choice (add_executable's first argument).
target=$(sed -n 's/^[[:space:]]*add_executable[[:space:]]*([[:space:]]*\([^[:space:])]*\).*/\1/p' "$src/CMakeLists.txt" | head -n1)
[ -n "$target" ] || die "no add_executable in $src/CMakeLists.txt"

say "Debug build (unpatched, as upstream's build.sh) in $out/debug"
cmake -S "$src" -B "$out/debug" -D CMAKE_BUILD_TYPE:STRING=Debug
make -C "$out/debug" -j "$jobs"

say "patched copy of the source in $out/src-O2"
rm -rf "$out/src-O2"
mkdir -p "$out/src-O2"
# Everything but upstream's own build directory and git metadata.
(cd "$src" && tar --exclude=./build --exclude=./.git -cf - .) | (cd "$out/src-O2" && tar -xf -)
if patch -d "$out/src-O2" -p1 -N --dry-run --silent <"$patch_file" >/dev/null 2>&1; then
    patch -d "$out/src-O2" -p1 -N --silent <"$patch_file"
elif patch -d "$out/src-O2" -p1 -R --dry-run --silent <"$patch_file" >/dev/null 2>&1; then
    say "the source already has both returns: nothing to patch"
else
    die "$patch_file does not apply to $src (a different upstream version?): add the two returns by hand"
fi

say "Release -O2 build in $out/release"
cmake -S "$out/src-O2" -B "$out/release" -D CMAKE_BUILD_TYPE:STRING=Release \
    "-DCMAKE_CXX_FLAGS_RELEASE=-O2 -DNDEBUG" "-DCMAKE_C_FLAGS_RELEASE=-O2 -DNDEBUG"
make -C "$out/release" -j "$jobs"

for b in "$out/debug/$target" "$out/release/$target"; do
    [ -x "$b" ] || die "the build finished but $b is not there"
done
say "debug:   $out/debug/$target"
say "release: $out/release/$target (-O2, patched)"
