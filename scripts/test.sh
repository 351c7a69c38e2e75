#!/usr/bin/env bash
# The test suite, as the README and CI run it: installs what the tests need
# when it is missing, then runs every unit and integration test with nextest.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests use: prlimit (util-linux) for the fd-exhaustion test.
missing=()
command -v prlimit >/dev/null || missing+=(util-linux)
if ((${#missing[@]})); then
  echo "== installing ${missing[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "== installing cargo-nextest"
  cargo install cargo-nextest --locked
fi

cargo nextest run --no-fail-fast "$@"
