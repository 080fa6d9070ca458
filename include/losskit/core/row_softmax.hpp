#pragma once
// One row's softmax written out, for kernels that need the probabilities themselves (not only
// their statistics): out_i = scale * softmax(z / T)_i over a row of n logits.
//
// Built on ChunkedSoftmax (core/softmax.hpp, exps_of_row): one pass over the logits storing
// exp((z_i - m_k) / T) into `ex` (one exp per element, m_k the running maximum), then one
// multiply per element by the chunk's factor scale * exp(m_k / T - lse) (taken in double,
// rounded once to the output type when it is T). `ex` is a scratch row of n entries of T, never
// `z`; it may be `out` itself when O is T. `out` may be `z` when `ex` is a separate row. Conventions as ChunkedSoftmax: -inf logits give exactly 0, a row of
// only -inf (or with NaN / +inf) gives NaN. Returns lse = log sum_i exp(z_i / T).
// Users: transport/sinkd.hpp (both forms), distill/ps_kd.hpp (targets and the prediction table).

#include <cstddef>
#include <type_traits>

#include "losskit/core/simd.hpp"
#include "losskit/core/softmax.hpp"

namespace losskit::detail {

template <class T, class O>
inline double softmax_row(const T* z, std::size_t n, T inv_t, O* out, T* ex, ChunkedSoftmax<T>& sm,
                          double scale = 1.0) {
  exps_of_row(sm, z, n, inv_t, ex);
  const double lse = sm.finish(false);
  for_chunks<T>(n, [&](std::size_t k, std::size_t b, std::size_t e) {
    const double f = scale * sm.factor_d(k);
    if constexpr (std::is_same_v<O, T>) {
      const T ft = T(f);
      simd::for_lanes<T>(b, e, [&](auto tag, std::size_t i) {
        using V = typename decltype(tag)::type;
        simd::store(out + i, simd::load<V>(ex + i) * V(ft));
      });
    } else {
      for (std::size_t i = b; i < e; ++i) out[i] = O(double(ex[i]) * f);
    }
  });
  return lse;
}

}  // namespace losskit::detail
