#!/usr/bin/env bash
# Builds the examples (release, build/release) and runs the main one, examples/distill_digits.cpp.
# Extra arguments are passed to it. LOSSKIT_JOBS (default 2) sets the build parallelism.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/common.sh
source scripts/common.sh

losskit_install_deps

cmake -S . -B "$LOSSKIT_RELEASE_DIR" "${LOSSKIT_RELEASE_ARGS[@]}"
cmake --build "$LOSSKIT_RELEASE_DIR" --target losskit_examples -j "$LOSSKIT_JOBS"

exe="$LOSSKIT_RELEASE_DIR/examples/distill_digits"
if [ -x "$exe" ]; then
  echo "== $exe $* =="
  exec "$exe" "$@"
fi
echo "losskit: $exe was not built (examples/distill_digits.cpp missing?)." >&2
echo "Examples found in examples/:" >&2
found=0
for f in examples/*.cpp; do
  [ -e "$f" ] || continue
  found=1
  n=$(basename "$f" .cpp)
  echo "  $n  ($LOSSKIT_RELEASE_DIR/examples/$n)" >&2
done
[ "$found" = 1 ] || echo "  (none)" >&2
exit 1
