#!/usr/bin/env bash
# The test command: installs the test broker if missing, then runs every
# test (unit tests and end-to-end tests against two nisshi brokers).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-nisshi.sh
# kubernetes-validate (PyPI), for tests/kubernetes.rs.
bash scripts/install-test-tools.sh
# Debian packages the tests need: the openssl CLI (the security tests make
# their test CA with it) and promtool (tests/alerts.rs checks the alert
# rules; Debian's prometheus package ships it).
need=()
command -v openssl >/dev/null || need+=(openssl)
command -v promtool >/dev/null || need+=(prometheus)
if [ ${#need[@]} -gt 0 ]; then
    if command -v apt-get >/dev/null; then
        SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
    else
        echo "ci: missing ${need[*]} (Debian packages); install them" >&2
        exit 1
    fi
fi
export PATH="$HOME/.cargo/bin:$PATH"
# End-to-end tests start their own broker pairs; two at a time suit 2 cores.
cargo test --locked --all-targets -- --test-threads=2 "$@"
