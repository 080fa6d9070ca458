#!/usr/bin/env bash
# Differential fuzzing of losskit's row kernels with libFuzzer (tests/fuzz/fuzz_rows.cpp):
#   scripts/fuzz.sh [seconds]        (default 60)
# configures a clang build directory, builds fuzz_rows, runs it for the given time on one core
# with the corpus in <build>/corpus (kept between runs; seeded with one input per kernel), and
# exits non-zero on a finding (the input is saved as <build>/artifacts/crash-*; rerun it with
# <build>/tests/fuzz/fuzz_rows <file>).
# Environment: LOSSKIT_FUZZ_NATIVE=ON (default; -march=native) or OFF (the compiler's default
# instruction set, SSE2 on x86-64); LOSSKIT_FUZZ_DIR (default build/fuzz-native or
# build/fuzz-sse2); CXX (default clang++); LOSSKIT_JOBS (build parallelism, default 2);
# LOSSKIT_FUZZ_ARGS (extra libFuzzer flags).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

seconds=${1:-60}
native=${LOSSKIT_FUZZ_NATIVE:-ON}
if [ "$native" = ON ]; then default_dir=build/fuzz-native; else default_dir=build/fuzz-sse2; fi
build=${LOSSKIT_FUZZ_DIR:-$default_dir}

# -O2 -g without -DNDEBUG: the library's assertions stay on.
cmake -S . -B "$build" -DCMAKE_CXX_COMPILER="${CXX:-clang++}" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O2 -g" -DLOSSKIT_BUILD_FUZZ=ON -DLOSSKIT_NATIVE="$native" \
      -DLOSSKIT_BUILD_TESTS=OFF -DLOSSKIT_BUILD_BENCHMARKS=OFF -DLOSSKIT_BUILD_EXAMPLES=OFF \
      -DLOSSKIT_INSTALL=OFF >/dev/null
cmake --build "$build" --target fuzz_rows -j "${LOSSKIT_JOBS:-2}"

corpus=$build/corpus
mkdir -p "$corpus" "$build/artifacts"
# Seeds: one input per kernel (FuzzedDataProvider reads integers from the end, so the last byte
# picks the kernel, the one before it float / double).
seed_byte() { printf "\\$(printf '%03o' "$1")"; }
if [ -z "$(ls -A "$corpus")" ]; then
  for k in $(seq 0 21); do
    {
      for i in $(seq 1 48); do seed_byte $(( (k * 37 + i * 13) % 256 )); done
      seed_byte $((k % 2))
      seed_byte $((k / 2))
    } >"$corpus/seed-$k"
  done
fi

# ASan: no leak check at exit (thread_local scratch buffers are reachable until then anyway).
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
# shellcheck disable=SC2086
"$build/tests/fuzz/fuzz_rows" -max_total_time="$seconds" -max_len=256 -timeout=120 -rss_limit_mb=4096 \
  -print_final_stats=1 -artifact_prefix="$build/artifacts/" ${LOSSKIT_FUZZ_ARGS:-} "$corpus"
