#!/usr/bin/env bash
# A short cargo-fuzz run of the proxy's wire-protocol decoders (proxy/fuzz, target `decode`):
# startup packets, client frames with the bodies the proxy reads, server frames. Any panic fails.
# Knobs: FUZZ_SECONDS (default 30). Needs a nightly toolchain; installs cargo-fuzz when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_build_tools
ensure_cxx
seconds="${FUZZ_SECONDS:-30}"
if ! cargo +nightly --version >/dev/null 2>&1; then
    rustup toolchain install nightly --profile minimal >/dev/null 2>&1 || {
        echo "fuzz: skipped, no nightly toolchain (rustup toolchain install nightly) — the decoder's random-input unit test still ran" >&2
        exit 0
    }
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked --quiet
fi
export CARGO_TARGET_DIR="${DMF_FUZZ_TARGET_DIR:-${CARGO_TARGET_DIR:-$PWD/target}/fuzz}"
cd proxy/fuzz
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
if cargo +nightly fuzz run decode -- -max_total_time="$seconds" >"$log" 2>&1; then
    runs="$(grep -oE 'Done [0-9]+ runs' "$log" | tail -n 1 | awk '{print $2}')"
    echo "fuzz: decode ran ${runs:-?} inputs in ${seconds} s, no crash"
else
    tail -n 40 "$log"
    echo "fuzz: decode FAILED (crash input under proxy/fuzz/artifacts/decode/)" >&2
    exit 1
fi
