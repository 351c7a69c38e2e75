#!/usr/bin/env bash
# The test suite, as the README and CI run it: installs what the tests need
# when it is missing, then runs every unit and integration test with nextest.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh

cargo nextest run --no-fail-fast "$@"
