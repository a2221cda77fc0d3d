#!/usr/bin/env bash
# The test command: installs the test broker if missing, then runs every
# test (unit tests and end-to-end tests against two nisshi brokers).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-nisshi.sh
export PATH="$HOME/.cargo/bin:$PATH"
# End-to-end tests start their own broker pairs; two at a time suit 2 cores.
cargo test --locked --all-targets -- --test-threads=2 "$@"
