#!/usr/bin/env bash
# Runs every cargo-fuzz target for a fixed time (FUZZ_SECONDS each, default
# 60) and keeps its corpus in the repository:
#
#   fuzz/seeds/<target>    hand-written seeds (one per validation rule and
#                          registry verb), read-only
#   fuzz/corpus/<target>   what the fuzzer found worth keeping, minimised
#                          with `cargo fuzz cmin` after each run; commit it
#
# A crash stops the script with the fuzzer's report; the input is in
# fuzz/artifacts/<target>/. Needs cargo-fuzz (installed if missing) and a
# nightly toolchain for its -Z flags (`rustup toolchain install nightly`);
# without nightly it tries the stable toolchain with RUSTC_BOOTSTRAP=1.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${FUZZ_SECONDS:-60}

if ! command -v cargo-fuzz >/dev/null; then
  echo "== cargo-fuzz is missing: cargo install cargo-fuzz --locked"
  if ! cargo install cargo-fuzz --locked; then
    echo "fuzz.sh: cannot install cargo-fuzz; nothing was fuzzed." >&2
    exit 2
  fi
fi
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  fuzz=(cargo +nightly fuzz)
else
  echo "fuzz.sh: no nightly toolchain (rustup toolchain install nightly);" \
    "trying stable with RUSTC_BOOTSTRAP=1, which may fail to build the sanitizer." >&2
  export RUSTC_BOOTSTRAP=1
  fuzz=(cargo fuzz)
fi

for target in $("${fuzz[@]}" list); do
  corpus="fuzz/corpus/$target"
  mkdir -p "$corpus"
  echo "== fuzzing $target for ${SECONDS_EACH}s (corpus $corpus, seeds fuzz/seeds/$target)"
  "${fuzz[@]}" run "$target" "$corpus" "fuzz/seeds/$target" -- \
    -max_total_time="$SECONDS_EACH" -max_len=4096 -timeout=10
  echo "== minimising $corpus"
  "${fuzz[@]}" cmin "$target" "$corpus" -- -max_len=4096
  bytes=$(du -sb "$corpus" | cut -f1)
  echo "== $target: $(find "$corpus" -type f | wc -l) inputs, $bytes bytes"
  if [ "$bytes" -gt 2000000 ]; then
    echo "fuzz.sh: $corpus is over 2 MB even minimised; check what grows before committing it" >&2
  fi
done
