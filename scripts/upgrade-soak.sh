#!/usr/bin/env bash
# A longer run of the hitless-upgrade test: UPGRADES upgrades in a row (100
# by default) under RATE new connections a second (6000), with 3
# SHA-256-checked streams across each upgrade, on a release build. Prints
# how many clients were served, refused, reset and lost, and the median
# times to the new process serving and to the old one's exit. Bounded: it
# stops after its upgrades (about 0.5 s each).
set -euo pipefail
cd "$(dirname "$0")/.."
export L4MESH_UPGRADES="${UPGRADES:-100}" L4MESH_UPGRADE_RATE="${RATE:-6000}"
cargo nextest run --release --test upgrade --no-capture \
    it_should_upgrade_ten_times_under_load 2>&1 |
    grep -E '^upgrade [0-9]+:|upgrades: |PASS|FAIL|panicked'
