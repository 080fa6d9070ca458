#pragma once
// Row-parallel execution. Rows are split into contiguous ranges, one per thread; every row is
// computed by the same code whatever thread runs it, and reductions over rows happen afterwards
// in row order, so results do not depend on the thread count (same bits).

#include <algorithm>
#include <cstddef>
#include <exception>
#include <thread>
#include <vector>

namespace losskit::detail {

inline int resolve_threads(int requested, std::ptrdiff_t rows) {
  int t = requested > 0 ? requested : int(std::max(1u, std::thread::hardware_concurrency()));
  return int(std::max<std::ptrdiff_t>(1, std::min<std::ptrdiff_t>(t, rows)));
}

// fn(thread_index, begin, end) on `threads` contiguous ranges of [0, rows).
template <class Fn>
inline void parallel_ranges(std::ptrdiff_t rows, int threads, Fn&& fn) {
  if (threads <= 1 || rows <= 1) {
    fn(0, std::ptrdiff_t(0), rows);
    return;
  }
  std::vector<std::thread> pool;
  std::vector<std::exception_ptr> errors(static_cast<std::size_t>(threads));
  pool.reserve(std::size_t(threads - 1));
  auto range = [&](int t) {
    const std::ptrdiff_t b = rows * t / threads, e = rows * (t + 1) / threads;
    try {
      fn(t, b, e);
    } catch (...) {
      errors[std::size_t(t)] = std::current_exception();
    }
  };
  for (int t = 1; t < threads; ++t) pool.emplace_back(range, t);
  range(0);
  for (auto& th : pool) th.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

}  // namespace losskit::detail
