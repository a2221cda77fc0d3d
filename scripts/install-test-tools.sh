#!/usr/bin/env bash
# Installs the test tools that come from PyPI, once per machine, when they
# are missing: kubernetes-validate (tests/kubernetes.rs validates
# deploy/kubernetes/*.yaml with it, offline: the Kubernetes schemas ship in
# the package). It goes into the `python3` on PATH (`python3 -m pip`), so
# the test can always run it as `python3 -m kubernetes_validate`, even where
# pip's scripts directory is not on PATH.
set -euo pipefail

KUBERNETES_VALIDATE_VERSION=1.37.0

have_kubernetes_validate() {
    [ "$(python3 -m kubernetes_validate --version 2>/dev/null || true)" = "$KUBERNETES_VALIDATE_VERSION" ]
}

if ! command -v python3 >/dev/null 2>&1; then
    echo "install-test-tools: python3 is missing (Debian: apt-get install python3 python3-pip)" >&2
    exit 1
fi

if have_kubernetes_validate; then
    exit 0
fi

if ! python3 -m pip --version >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
        SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends python3-pip
    else
        echo "install-test-tools: python3 has no pip; install it" >&2
        exit 1
    fi
fi

echo "install-test-tools: installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION from PyPI (python3 -m pip)" >&2
pip_install() {
    python3 -m pip install --quiet --disable-pip-version-check --no-input \
        "$@" "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
}
# A Debian system python refuses installs outside a virtualenv (PEP 668):
# then into the user's site-packages.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! pip_install 2>"$log"; then
    if grep -q externally-managed "$log"; then
        pip_install --user --break-system-packages
    else
        cat "$log" >&2
        exit 1
    fi
fi
# pyenv: make a shim for the new script (harmless elsewhere).
if command -v pyenv >/dev/null 2>&1; then
    pyenv rehash 2>/dev/null || true
fi

if ! have_kubernetes_validate; then
    echo "install-test-tools: kubernetes-validate installed, but \`python3 -m kubernetes_validate --version\` fails" >&2
    exit 1
fi
echo "install-test-tools: kubernetes-validate $KUBERNETES_VALIDATE_VERSION ready (\`python3 -m kubernetes_validate\`$(command -v kubernetes-validate >/dev/null 2>&1 && echo ", or $(command -v kubernetes-validate)"))" >&2
