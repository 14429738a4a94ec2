#!/usr/bin/env bash
# fuzz/run.sh [RUNS]: runs every fuzz target for RUNS executions each (default
# 10,000,000), one after another, on the stable toolchain, starting from the kept
# corpus in fuzz/corpus/TARGET. Installs cargo-fuzz if it is missing.
#
# Prints libFuzzer's "Done N runs" line per target. Exits non-zero on the first
# crash, failed assertion, timeout or out-of-memory, naming the target and the
# reproducer file (libFuzzer writes it to fuzz/artifacts/TARGET/).
#
# The kept corpus is only read: what a run discovers goes to a scratch directory
# that is deleted at the end (to keep it, see fuzz/README.md: cmin).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

RUNS=${1:-10000000}
[[ $RUNS =~ ^[0-9]+$ ]] || { echo "usage: fuzz/run.sh [RUNS]" >&2; exit 2; }

# cargo-fuzz passes a few -Z flags; stable rustc accepts them with this set.
export RUSTC_BOOTSTRAP=1
# No sanitizer: the fuzzed code is all #![forbid(unsafe_code)], so AddressSanitizer
# would find nothing and cost 10-30x the executions per second. Debug assertions
# and overflow checks instead (-a), which can fire in that code.
FLAGS=(--sanitizer none --debug-assertions)

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz/run.sh: installing cargo-fuzz" >&2
    cargo install --locked cargo-fuzz
fi

cargo fuzz build "${FLAGS[@]}"

scratch=$(mktemp -d /tmp/fuzz-run.XXXXXX)
trap 'rm -rf "$scratch"' EXIT

for target in $(cargo fuzz list); do
    mkdir -p "$scratch/$target" "fuzz/corpus/$target"
    opts=(-runs="$RUNS")
    if [[ $target == conn || $target == handover ]]; then
        # A script: a few hundred bytes reach any state (a filler op adds up to
        # 4335 bytes), and longer ones only cost speed.
        opts+=(-max_len=512)
    elif [[ $target == memcache_proto ]]; then
        # memcached's protocol: past LINE_MAX (2048) and a 16 KB read buffer.
        opts+=(-max_len=20000 -dict=fuzz/memcache.dict)
    else
        # Raw protocol bytes: past REQUEST_MAX, with the protocol's tokens.
        opts+=(-max_len=5000 -dict=fuzz/protocol.dict)
    fi
    log=$scratch/$target.log
    start=$SECONDS
    if cargo fuzz run "${FLAGS[@]}" "$target" "$scratch/$target" "fuzz/corpus/$target" \
        -- "${opts[@]}" >"$log" 2>&1; then
        done_line=$(grep -E '^Done [0-9]+ runs' "$log" | tail -n 1)
        [[ -n $done_line ]] || { tail -n 20 "$log" >&2; echo "fuzz/run.sh: $target: no 'Done' line" >&2; exit 1; }
        echo "$target: $done_line (wall $((SECONDS - start)) s)"
    else
        tail -n 40 "$log" >&2
        repro=$(grep -oE 'Test unit written to [^ ]+' "$log" | tail -n 1 | cut -d' ' -f5)
        echo "fuzz/run.sh: $target FAILED; reproducer: ${repro:-none written (see the log above)}" >&2
        [[ -z $repro ]] || echo "  replay: RUSTC_BOOTSTRAP=1 cargo fuzz run ${FLAGS[*]} $target $repro" >&2
        exit 1
    fi
done
