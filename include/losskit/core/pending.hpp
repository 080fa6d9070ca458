#pragma once
// A gradient row that is written later, element by element, inside another loop (pipelined
// rows: the next row's pass over memory), so that its stores overlap that loop's loads and
// arithmetic instead of running as a pass of their own with the core waiting on memory.
// PendingRow is what every such row needs besides its formula: the output, how to store
// (non-temporal stores for large outputs where the row is batch-aligned; chunk offsets keep the
// alignment; one fence at the end) and one entry set last, after the fence (e.g. the target
// class's entry, computed in double). The formula and its per-chunk coefficients belong to the
// kernel: core/pair.hpp (PairScratch::Pending), classification/cross_entropy.hpp.

#include <cstddef>
#include <cstdint>

#include "losskit/core/simd.hpp"

namespace losskit::detail {

template <class T>
struct PendingRow {
  static constexpr std::size_t no_fix = std::size_t(-1);
  T* out = nullptr;
  std::size_t n = 0;
  bool stream = false;  // non-temporal stores asked for (large output)
  bool nt = false;      // ... and usable: `out` is batch-aligned
  std::size_t fix = no_fix;
  T fix_value = T(0);

  explicit operator bool() const noexcept { return out != nullptr; }

  // Records `o[0, len)` as the row to write; out[fix_at] = fix_to after the rest.
  void start(T* o, std::size_t len, bool streaming, std::size_t fix_at = no_fix, T fix_to = T(0)) noexcept {
    out = o;
    n = len;
    stream = streaming;
    nt = streaming && reinterpret_cast<std::uintptr_t>(o) % sizeof(simd::batch<T>) == 0;
    fix = fix_at;
    fix_value = fix_to;
  }
  // out[i, i + lanes) = v.
  template <class V>
  void put(std::size_t i, const V& v) const noexcept {
    if (simd::is_batch<V> && nt)
      simd::stream(out + i, v);
    else
      simd::store(out + i, v);
  }
  // After the last put(): the fence (streamed rows), the fixed entry; the row is done.
  void end() noexcept {
    if (stream) simd::stream_fence();
    if (fix != no_fix) out[fix] = fix_value;
    out = nullptr;
  }
};

}  // namespace losskit::detail
