#!/usr/bin/env bash
# Coverage-guided fuzzing of haul's decoders on a *stable* toolchain.
#
#   fuzz/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
# Builds the libFuzzer targets with the sanitizer-coverage passes (stable
# codegen flags; no ASan, which safe Rust does not need), seeds the corpus
# with valid structures, and runs each target for the given time (default 60).
# Crashes land in fuzz/artifacts/<target>/ and replay with
#   cargo run --manifest-path fuzz/Cargo.toml --bin repro -- <target> <file>
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-60}"
shift || true
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(blob pack index tree snapshot tar extract zip manifest wire)

host="$(rustc -vV | sed -n 's/^host: //p')"
dir=fuzz/target/instrumented
export RUSTFLAGS="-Cpasses=sancov-module \
 -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
 -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares \
 --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
bins=()
for t in "${targets[@]}"; do bins+=(--bin "$t"); done
# --target keeps RUSTFLAGS off build scripts and proc macros.
cargo build --release --manifest-path fuzz/Cargo.toml --target "$host" \
  --target-dir "$dir" "${bins[@]}"
RUSTFLAGS= cargo run --quiet --manifest-path fuzz/Cargo.toml --bin seeds -- fuzz/corpus

for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
  echo "== $t (${secs}s)"
  seeds=()
  [ -d "fuzz/seeds/$t" ] && seeds=("fuzz/seeds/$t")
  "$dir/$host/release/$t" "fuzz/corpus/$t" "${seeds[@]}" \
    -max_total_time="$secs" -max_len=65536 \
    -rss_limit_mb=1024 -malloc_limit_mb=64 \
    -artifact_prefix="fuzz/artifacts/$t/" -print_final_stats=1
done
