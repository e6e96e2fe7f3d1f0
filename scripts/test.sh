#!/usr/bin/env bash
# The test command: starts the local services (installing what is missing), then checks
# formatting, lints, and runs the whole test suite and a short fuzzing pass. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/local-services.sh start

# The S3/STS test server accepts any credentials; the SDK must find some in its standard chain and
# must not wait for the instance metadata endpoint, which this machine refuses.
export AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-test} AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-test}
export AWS_EC2_METADATA_DISABLED=true

if command -v rustup >/dev/null; then
  rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
fi

echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
# A failing test's message and what it printed matter more than a backtrace, which would push
# them out of the tail of a long log (set RUST_BACKTRACE=1 to have them anyway).
export RUST_BACKTRACE=${RUST_BACKTRACE_TESTS:-0}
# Some tests run the service binaries as separate processes.
cargo build --workspace --bins --locked
prune_test_topics() {
  "${CARGO_TARGET_DIR:-target}/debug/delete-test-topics" "${ACTIVITY_TEST_KAFKA_BROKERS:-127.0.0.1:9092}" ||
    echo "warning: the topics of earlier test runs were not all deleted; the tests run regardless" >&2
}
# Tests make topics under unique names and leave them; those of the previous run are deleted
# first, and this run's after it passes, so the broker's start (which loads every partition)
# stays short on a machine that runs the tests again and again.
echo "== deleting the topics of earlier test runs"
prune_test_topics
cargo test --workspace --locked
prune_test_topics
echo "== fuzzing"
scripts/fuzz.sh "${ACTIVITY_FUZZ_SECONDS:-20}"
