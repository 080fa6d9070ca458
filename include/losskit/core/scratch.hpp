#pragma once
// Per-thread scratch rows. A kernel needs a few rows of `cols` elements per thread; they are
// kept in a thread_local buffer that only grows, so repeated calls allocate nothing and never
// touch fresh pages. Contents are uninitialised.

#include <cstddef>
#include <cstdlib>
#include <memory>
#include <new>

namespace losskit::detail {

struct AlignedFree {
  void operator()(void* p) const noexcept { std::free(p); }
};

// Returns 64-byte aligned storage for `n` elements of T, valid until the next call from the
// same thread with another type or a larger size. One buffer per thread and scalar type.
template <class T>
inline T* scratch(std::size_t n) {
  thread_local std::unique_ptr<void, AlignedFree> buf;
  thread_local std::size_t cap = 0;
  if (n > cap) {
    const std::size_t bytes = ((n * sizeof(T) + 63) / 64) * 64;
    void* p = std::aligned_alloc(64, bytes);
    if (!p) throw std::bad_alloc();
    buf.reset(p);
    cap = n;
  }
  return static_cast<T*>(buf.get());
}

}  // namespace losskit::detail
