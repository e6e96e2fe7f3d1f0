#!/usr/bin/env bash
# Builds the fuzz targets and runs each for a bounded time (default 20 s).
#   scripts/fuzz.sh [seconds]
# cargo-fuzz is installed from crates.io when missing. libFuzzer's instrumentation needs a nightly
# compiler; where only a stable toolchain exists, RUSTC_BOOTSTRAP lets it accept the flags.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${1:-20}
CARGO_FUZZ_VERSION=0.13.2

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "[fuzz] installing cargo-fuzz $CARGO_FUZZ_VERSION" >&2
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked --quiet
fi
toolchain=()
if rustup run nightly rustc --version >/dev/null 2>&1; then
  toolchain=(+nightly)
else
  export RUSTC_BOOTSTRAP=1
fi
# Fuzz builds get their own target directory: their compiler flags differ from the main build's.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}-fuzz"
mkdir -p "$CARGO_TARGET_DIR"
for target in $(cargo "${toolchain[@]}" fuzz list); do
  mkdir -p "corpus/$target"
  # Seeds are request bodies, for the body parser.
  [[ $target == events_body ]] && { cp -n seeds/* corpus/events_body/ 2>/dev/null || true; }
  echo "[fuzz] $target for ${seconds}s" >&2
  log="$CARGO_TARGET_DIR/$target.log"
  if ! cargo "${toolchain[@]}" fuzz run "$target" "corpus/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "[fuzz] $target failed; the input is in fuzz/artifacts/$target" >&2
    exit 1
  fi
  grep -E '^(#[0-9]+ +DONE|Done [0-9]+ runs)' "$log" >&2 || tail -n 3 "$log" >&2
done
