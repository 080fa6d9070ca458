#pragma once
// Options and the call path shared by every student/teacher divergence: argument checks, the
// row plan (ignored rows, weights, reduction), scratch, and the public entry points.

#include <cstdint>
#include <type_traits>

#include "losskit/core/checks.hpp"
#include "losskit/core/pair.hpp"
#include "losskit/core/rows.hpp"
#include "losskit/core/types.hpp"
#include "losskit/core/views.hpp"

namespace losskit {

// Options of the divergences between a student and a teacher (kl_div, reverse_kl_div, jsd,
// skew_kl_div, skew_reverse_kl_div, tvd, cauchy_schwarz_div). Fields a kernel does not use are
// ignored by it. C++20 callers can use designated initialisers: {.temperature = 2.0, .threads = 2}.
struct DivergenceOptions {
  double temperature = 1.0;         // both inputs are divided by T before the softmax
  bool scale_by_t_squared = false;  // Hinton-style KD: multiply loss and gradient by T^2
                                    // (Liger, TRL, DistiLLM do not; off by default)
  Reduction reduction = Reduction::mean;
  Labels labels{};                  // optional, one per row; rows equal to ignore_index are skipped
  std::int64_t ignore_index = -100;
  Weights weights{};                // optional per-row weights or 0/1 mask
  double grad_scale = 1.0;          // upstream gradient of the reduced loss
  double normalizer = 0.0;          // > 0: divide by this instead (e.g. a global token count)
  int threads = 1;                  // 0: all hardware threads; results never depend on it
  Input student_input = Input::logits;
  Input teacher_input = Input::logits;
  double beta = 0.5;                // jsd: weight of the teacher in the mixture M = beta p + (1 - beta) q
  double skew_alpha = 0.1;          // skew_kl_div / skew_reverse_kl_div: the skew lambda (DistiLLM)
};

namespace detail {

// Kernel concept (one struct per divergence header):
//   static constexpr const char* name;
//   static constexpr bool spare_row;                 // needs PairScratch::ex
//   static void check(const char* fn, const DivergenceOptions&);
//   template <class T> static double row(PairRow<T>&, T* grad_or_null, double scale,
//                                        const DivergenceOptions&);
// Rows are pipelined (core/pair.hpp): after write_grad() / defer_grad() the scratch rows
// w.es, w.et, w.ex hold the recorded gradient's inputs until the next row's stats() (or
// flush()) has read them, so a kernel writes no scratch row after it.
// A kernel with options of its own (e.g. topk_kl_div) takes its own Options type in place of
// DivergenceOptions; it must have DivergenceOptions' temperature, scale_by_t_squared, input
// kinds and row fields (reduction, labels, ignore_index, weights, grad_scale, normalizer, threads).
template <class Kernel, class T, class Options>
inline LossResult run_pair(const RowsView<const T>& s, const RowsView<const T>& t, const RowsView<T>& g,
                           const Options& o) {
  const double temp = o.temperature;
  RowPlan plan = plan_rows(o, s.rows, s.cols, o.scale_by_t_squared ? temp * temp : 1.0);
  const T inv_t = T(1.0 / temp);
  const bool slp = o.student_input == Input::log_probs, tlp = o.teacher_input == Input::log_probs;
  const bool stream = streaming_output<T>(s.rows, s.cols);
  // Rows are pipelined when there is a gradient: each row's gradient is written while the
  // next row's statistics are computed (see core/pair.hpp); the last row's by `finish`.
  const bool pipelined = g.data != nullptr && s.rows > 1;
  return run_rows<T>(
      plan, s.rows, g, [&] { return PairScratch<T>(s.cols, Kernel::spare_row, pipelined); },
      [&](PairScratch<T>& w, std::ptrdiff_t r, T* grad, double scale) {
        PairRow<T> row{s.row(r), t.row(r), std::size_t(s.cols), inv_t, slp, tlp, w, stream};
        return Kernel::row(row, grad, scale, o);
      },
      [](PairScratch<T>& w) { w.flush(); });
}

template <class Kernel, class S, class Tt, class G, class Options>
inline LossResult pair_loss(const S& student, const Tt& teacher, G* grad, const Options& o) {
  using T = scalar_of_t<S>;
  const char* fn = Kernel::name;
  const auto v = checked_pair_views(fn, "student", student, "teacher", teacher, grad);
  const RowsView<const T>& sv = v.a;
  const RowsView<const T>& tv = v.b;
  const RowsView<T>& gv = v.g;
  if (grad && gv.data == tv.data) fail(fn, "'grad' may alias 'student' but not 'teacher'");
  check_positive(fn, "temperature", o.temperature);
  if ((o.student_input == Input::log_probs || o.teacher_input == Input::log_probs) && o.temperature != 1.0)
    fail(fn, "'temperature' must be 1 with log-probability inputs, got ", o.temperature);
  check_row_options(fn, o, sv.rows);
  Kernel::check(fn, o);
  return run_pair<Kernel, T>(sv, tv, gv, o);
}

}  // namespace detail
}  // namespace losskit

// Declares the two public overloads of a divergence: with a gradient output (any writable
// row-major matrix of the student's shape, which may be the student itself) and forward only.
#define LOSSKIT_PAIR_LOSS(fn, Kernel) LOSSKIT_PAIR_LOSS_WITH_OPTIONS(fn, Kernel, ::losskit::DivergenceOptions)

// The same for a kernel whose options struct is its own (see run_pair).
#define LOSSKIT_PAIR_LOSS_WITH_OPTIONS(fn, Kernel, Options)                                       \
  template <class S, class Tt, class G, std::enable_if_t<::losskit::is_rows_v<G>, int> = 0>       \
  inline ::losskit::LossResult fn(const S& student, const Tt& teacher, G&& grad,                  \
                                  const Options& options = {}) {                                  \
    return ::losskit::detail::pair_loss<Kernel>(student, teacher, &grad, options);                \
  }                                                                                                \
  template <class S, class Tt>                                                                     \
  inline ::losskit::LossResult fn(const S& student, const Tt& teacher, const Options& options = {}) { \
    return ::losskit::detail::pair_loss<Kernel>(student, teacher,                                 \
                                                static_cast<::losskit::RowMatrix<                  \
                                                    ::losskit::scalar_of_t<S>>*>(nullptr),        \
                                                options);                                          \
  }
