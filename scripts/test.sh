#!/usr/bin/env bash
# The test command: installs the test broker if missing, then runs every
# test (unit tests and end-to-end tests against two nisshi brokers).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-nisshi.sh
# The security tests make their test CA with the openssl CLI.
if ! command -v openssl >/dev/null; then
    if command -v apt-get >/dev/null; then
        SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
        $SUDO apt-get update -qq && $SUDO apt-get install -y -qq openssl
    else
        echo "ci: the openssl CLI is missing; install it" >&2
        exit 1
    fi
fi
export PATH="$HOME/.cargo/bin:$PATH"
# End-to-end tests start their own broker pairs; two at a time suit 2 cores.
cargo test --locked --all-targets -- --test-threads=2 "$@"
