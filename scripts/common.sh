# Shared by scripts/test.sh and scripts/example.sh (sourced, not run).

# Debian packages losskit's build, tests, benchmarks and examples need.
LOSSKIT_APT_PACKAGES=(cmake g++ make libeigen3-dev libxsimd-dev catch2 libbenchmark-dev zlib1g-dev
                      git ca-certificates)

# The release build shared by test.sh and example.sh (same cache, so neither reconfigures the other).
LOSSKIT_RELEASE_DIR=build/release
# libtorch is only for the side-by-side benchmarks (see README, Performance): off here, so that
# the test run does not compile torch's headers.
LOSSKIT_RELEASE_ARGS=(-DCMAKE_BUILD_TYPE=Release -DLOSSKIT_BUILD_TESTS=ON -DLOSSKIT_BENCH_TORCH=OFF
                      -DLOSSKIT_BUILD_BENCHMARKS=ON -DLOSSKIT_BUILD_EXAMPLES=ON)
LOSSKIT_JOBS=${LOSSKIT_JOBS:-2}

# Installs the missing packages with apt-get when running as root on a Debian-like system.
# Otherwise (not root, no apt-get/dpkg) it only reports what seems missing and carries on:
# CMake then names any dependency it really cannot find.
losskit_install_deps() {
  local missing=()
  if command -v dpkg-query >/dev/null 2>&1; then
    local p
    for p in "${LOSSKIT_APT_PACKAGES[@]}"; do
      if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$p")
      fi
    done
  else
    local c
    for c in cmake g++ make git; do
      command -v "$c" >/dev/null 2>&1 || missing+=("$c")
    done
  fi
  if [ ${#missing[@]} -eq 0 ]; then
    return 0
  fi
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "losskit: installing missing packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends "${LOSSKIT_APT_PACKAGES[@]}"
  else
    echo "losskit: warning: these packages seem to be missing: ${missing[*]}" >&2
    echo "losskit: on Debian/Ubuntu run (as root): apt-get update && apt-get install -y" \
         "--no-install-recommends ${LOSSKIT_APT_PACKAGES[*]}" >&2
  fi
}
