#!/usr/bin/env bash
# Installs the nisshi test broker (a Kafka-protocol broker in Rust) once per
# machine, into ~/.cargo/bin. About 9 minutes on 2 cores the first time.
set -euo pipefail
export PATH="$HOME/.cargo/bin:$PATH"
if command -v nisshi >/dev/null 2>&1; then
  exit 0
fi
echo "installing the nisshi 0.8.1 test broker into ~/.cargo/bin (once per machine, ~9 min on 2 cores)" >&2
cargo install nisshi --version 0.8.1 --locked --ignore-rust-version
