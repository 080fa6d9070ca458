#pragma once
// exp2_ftz(x) = 2^x for softmax-style exponents (x <= 64 or so after a shift): 2^-inf = 0,
// NaN -> NaN, tiny results flushed to 0 like xsimd's float exp.
//
// AVX-512 float batches: 9 instructions. n = round(x), f = x - n in [-1/2, 1/2], p(f) = 2^f by
// a degree-5 polynomial (Horner, fma), then scalef(p, n) = p 2^n, with the lanes x < -126 zeroed
// by the instruction's mask (NaN compares "not less" and stays NaN; +inf from x >= 128). The
// polynomial is the minimax fit of the relative error of 2^f on [-1/2, 1/2] with p(0) = 1
// (Lawson-iterated least squares, 9.1e-8 in exact arithmetic); measured in float over
// [-126, 128): relative error <= 1.71e-7 (about 2 ulp of the results near 2^-1/2). Degree 6
// gave 7.9e-8; the fma it saves is 3-5% of kl_div, cauchy_schwarz_div and kd_loss, whose loops
// are bound by the fma pipes (same-session A/B, 1024 x 32000), and the losses' accuracy
// contract (1e-5 relative) is two orders of magnitude away. xsimd's exp2 (1.5x slower than the
// degree-6 version) adds range selects and an integer ldexp to its generic reduction.
// Everything else (double, other instruction sets, the scalar tail) is simd::exp2: xsimd's exp2
// on batches (+inf from x >= 127, 0 below about -127) and std::exp2 on scalars (subnormal
// results kept), so results differ from the AVX-512 path by an ulp or two and in the subnormal
// range only.

#include "losskit/core/simd.hpp"

namespace losskit::simd {

template <class V>
inline V exp2_ftz(const V& x) noexcept {
#if defined(__AVX512F__)
  if constexpr (is_batch<V> && sizeof(V) == 64 && std::is_same_v<scalar_t<V>, float>) {
    const __m512 v = x;
    const __mmask16 live = _mm512_cmp_ps_mask(v, _mm512_set1_ps(-126.0f), _CMP_NLT_UQ);
    const __m512 n = _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 f = _mm512_sub_ps(v, n);
    __m512 p = _mm512_set1_ps(1.326472918187424e-3f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.671513435417722e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5507337458019224e-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022242073257066e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931469775929378e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    return V(_mm512_maskz_scalef_ps(live, p, n));
  } else {
    return simd::exp2(x);
  }
#else
  return simd::exp2(x);
#endif
}

}  // namespace losskit::simd
