#!/usr/bin/env bash
# The test suite, as the README and CI run it: installs what the tests need
# when it is missing, then runs every unit and integration test with nextest.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests use: prlimit (util-linux) for the fd-exhaustion
# test, promtool (prometheus) to check /metrics.
missing=()
command -v prlimit >/dev/null || missing+=(util-linux)
command -v promtool >/dev/null || missing+=(prometheus)
if ((${#missing[@]})); then
  echo "== installing ${missing[*]}"
  # Keep Debian from starting the packages' services (we only need promtool).
  own_policy=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    own_policy=1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  ((own_policy)) && rm -f /usr/sbin/policy-rc.d
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "== installing cargo-nextest"
  cargo install cargo-nextest --locked
fi

cargo nextest run --no-fail-fast "$@"
