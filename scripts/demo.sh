#!/usr/bin/env bash
# The demo: two local nisshi clusters ("east" on 19092, "west" on 19192),
# sample data, kmirror mirroring east -> west with config/east-west.toml,
# and its metrics. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-nisshi.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --locked --bins
exec target/release/kmirror-demo "$@"
