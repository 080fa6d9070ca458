#pragma once
// A gradient row that is written later, element by element, inside another loop (pipelined
// rows: the next row's pass over memory), so that its stores overlap that loop's loads and
// arithmetic instead of running as a pass of their own with the core waiting on memory.
// PendingRow is what every such row needs besides its formula: the output, how to store
// (non-temporal stores for large outputs where the row is batch-aligned; chunk offsets keep the
// alignment; one fence at the end) and one entry set last, after the fence (e.g. the target
// class's entry, computed in double). The formula and its per-chunk coefficients belong to the
// kernel: core/pair.hpp (PairScratch::Pending), classification/cross_entropy.hpp and the
// one-softmax kernels (soft_cross_entropy, ldr_kl, elr, spherical_z_loss). store_row()
// writes a row right away with the same store rule (one definition of it: streamable, put_lanes).

#include <cstddef>
#include <cstdint>

#include "losskit/core/simd.hpp"

namespace losskit::detail {

// Whether a row starting at `p` may take non-temporal stores: asked for (`stream`, large
// outputs) and batch-aligned (offsets that are multiples of a batch keep the alignment).
template <class T>
inline bool streamable(const T* p, bool stream) noexcept {
  return stream && reinterpret_cast<std::uintptr_t>(p) % sizeof(simd::batch<T>) == 0;
}

// out[i, i + lanes) = v: a non-temporal store for a whole batch when `nt`, else a plain store.
template <class T, class V>
inline void put_lanes(T* out, std::size_t i, const V& v, bool nt) noexcept {
  if (simd::is_batch<V> && nt)
    simd::stream(out + i, v);
  else
    simd::store(out + i, v);
}

// out[i] = value(lanes<V>, i) over [b, e); with `stream`, whole batches at batch-aligned
// addresses go out as non-temporal stores (the caller fences once at the end).
template <class T, class Value>
inline void store_row(T* out, std::size_t b, std::size_t e, bool stream, Value&& value) {
  const bool nt = streamable(out + b, stream);
  simd::for_lanes<T>(b, e, [&](auto tag, std::size_t i) { put_lanes(out, i, value(tag, i), nt); });
}

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
    nt = streamable(o, streaming);
    fix = fix_at;
    fix_value = fix_to;
  }
  // out[i, i + lanes) = v.
  template <class V>
  void put(std::size_t i, const V& v) const noexcept {
    put_lanes(out, i, v, nt);
  }
  // After the last put(): the fence (streamed rows), the fixed entry; the row is done.
  void end() noexcept {
    if (stream) simd::stream_fence();
    if (fix != no_fix) out[fix] = fix_value;
    out = nullptr;
  }
  // The recorded row as a pass of its own (a thread's last row, which no next row's loop
  // writes): put(lanes<V>, i) at every index - the same function that kernel's next-row loop
  // calls, so both write the same bits - then end(). Nothing when no row is recorded.
  template <class Put>
  void flush(Put&& put) {
    if (!out) return;
    simd::for_lanes<T>(0, n, put);
    end();
  }
};

}  // namespace losskit::detail
