#!/usr/bin/env bash
# The one command to build and test losskit (users and CI):
#   1. installs missing Debian packages (as root, with apt-get);
#   2. release build (tests, benchmarks, examples; benchmarks are compiled, not run) in
#      build/release, then every test, including the two packaging tests;
#   3. AddressSanitizer + UBSan build of the tests in build/asan (packaging tests excluded);
#   4. prints "losskit tests: N passed, 0 failed" when both runs passed.
# LOSSKIT_JOBS (default 2) sets the build and ctest parallelism.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/common.sh
source scripts/common.sh

losskit_install_deps

phase_start=$SECONDS
phase_done() { echo "== losskit: $1 took $((SECONDS - phase_start)) s =="; phase_start=$SECONDS; }

# Number of tests ctest ran, from its "NN% tests passed, F tests failed out of N" line (0 if none).
ctest_total() {
  local line
  line=$(grep -E 'tests passed, [0-9]+ tests failed out of [0-9]+' "$1" | tail -n 1 || true)
  if [ -z "$line" ]; then echo 0; return; fi
  local failed total
  failed=$(sed -E 's/.* ([0-9]+) tests failed out of ([0-9]+).*/\1/' <<<"$line")
  total=$(sed -E 's/.* ([0-9]+) tests failed out of ([0-9]+).*/\2/' <<<"$line")
  if [ "$failed" != 0 ]; then
    echo "losskit: ctest reported $failed failed tests" >&2
    return 1
  fi
  echo "$total"
}

echo "== losskit: release build ($LOSSKIT_RELEASE_DIR) =="
cmake -S . -B "$LOSSKIT_RELEASE_DIR" "${LOSSKIT_RELEASE_ARGS[@]}"
cmake --build "$LOSSKIT_RELEASE_DIR" -j "$LOSSKIT_JOBS"
phase_done "release build"
(cd "$LOSSKIT_RELEASE_DIR" && ctest --output-on-failure --no-tests=error -j "$LOSSKIT_JOBS") \
  | tee "$LOSSKIT_RELEASE_DIR/ctest.log"
release_n=$(ctest_total "$LOSSKIT_RELEASE_DIR/ctest.log")
phase_done "release tests"

echo "== losskit: sanitizer build (build/asan) =="
# -O1 without debug info: an -O2 -g sanitizer build of one test file takes ~3x as long to
# compile on 2 cores (measured: 185 s vs 76 s for test_cross_entropy.cpp), and -O0 runs the
# finite-difference tests ~3x slower. Assertions stay on (no NDEBUG): Eigen's bounds checks help.
cmake -S . -B build/asan -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_FLAGS_RELEASE=-O1 -DLOSSKIT_SANITIZE=ON \
      -DLOSSKIT_NATIVE=OFF -DLOSSKIT_BUILD_TESTS=ON -DLOSSKIT_BUILD_BENCHMARKS=OFF \
      -DLOSSKIT_BUILD_EXAMPLES=OFF
cmake --build build/asan -j "$LOSSKIT_JOBS"
phase_done "sanitizer build"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:strict_string_checks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
# The packaging tests build other projects without sanitizers: nothing to gain from them here.
(cd build/asan && ctest --output-on-failure -j "$LOSSKIT_JOBS" -E '^(fetchcontent|find_package)_consumer$') \
  | tee build/asan/ctest.log
asan_n=$(ctest_total build/asan/ctest.log)
phase_done "sanitizer tests"
if [ "$asan_n" = 0 ]; then
  echo "losskit: warning: the sanitizer build has no unit tests (no tests/test_*.cpp yet)" >&2
fi

echo "losskit tests: $((release_n + asan_n)) passed, 0 failed"
