#pragma once
// Included first by every losskit header.

#define LOSSKIT_VERSION_MAJOR 0
#define LOSSKIT_VERSION_MINOR 1
#define LOSSKIT_VERSION_PATCH 0

// GCC 12's AVX-512 intrinsic headers trip -Wmaybe-uninitialized on their own
// _mm512_undefined_* idiom (GCC bug 105593) wherever an intrinsic is inlined. The diagnostic
// state where the intrinsics are *defined* is what counts, so include them once here with the
// warning off. (Include losskit before Eigen or xsimd to benefit.)
#if defined(__GNUC__) && !defined(__clang__) && (defined(__x86_64__) || defined(__i386__))
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#endif

// Inline into the caller: for_chunks and the per-chunk lambdas of the streaming loops
// (LOSSKIT_LAMBDA_INLINE goes after a lambda's parameter list), which GCC may otherwise leave
// out of line once they grow; out of line, every value they capture by reference is reloaded
// after each float store of the inner loop (measured: kl_div 5% slower).
#if defined(__GNUC__) || defined(__clang__)
#define LOSSKIT_ALWAYS_INLINE __attribute__((always_inline)) inline
#define LOSSKIT_LAMBDA_INLINE __attribute__((always_inline))
#else
#define LOSSKIT_ALWAYS_INLINE inline
#define LOSSKIT_LAMBDA_INLINE
#endif
