// libFuzzer differential target over losskit's row kernels (build: -DLOSSKIT_BUILD_FUZZ=ON with
// clang; run: scripts/fuzz.sh). The input bytes choose a kernel, float or double, a shape (rows
// 1..40, columns 1..9000 with a bias toward the 8 KiB chunk boundaries and SIMD widths), how the
// values are drawn (row modes: normal, +-1e4, ties, ramps whose later chunks jump far above the
// earlier ones, -inf entries, leading -inf runs, ...; bulk values come from a splitmix64 stream
// seeded by the input, the structure and point edits from the bytes), and the options.
//
// Oracles (a violated one prints the case and aborts, so libFuzzer saves the input):
//   (a) no ASan / UBSan report;
//   (b) 1 thread vs 2 threads: loss, side outputs and gradient bitwise equal;
//   (c) grad aliasing the input (and the targets / teacher where documented) vs a separate
//       output: bitwise equal;
//   (d) the matrix vs the same rows one at a time (reduction none / sum, or a normalizer):
//       per-row losses, their sum in row order and gradient rows bitwise equal (the matrix call
//       pipelines rows: a row's gradient is written in the next row's loop; a 1-row call does not);
//   (e) dpo_step / sequence_pair_step vs sequence_logprobs + dpo + sequence_logprobs_backward:
//       bitwise equal;
//   (f) rows whose documented loss is finite: finite loss and gradient, and a softmax gradient
//       w.r.t. logits sums to 0 (cross_entropy's z-loss: to 2 c lse) up to rounding;
//   (g) the forward-only overload gives the gradient overload's loss and side outputs;
//   plus: every gradient entry is written (the output starts as a NaN sentinel) and rows that
//   do not count (ignored, weight 0) get an exact 0 - they are filled with NaN, +inf or -inf
//   ("never read"), so they must not leak into the loss either.

#include <fuzzer/FuzzedDataProvider.h>
#include <losskit/losskit.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

namespace {

using losskit::Reduction;
template <class T>
using Mat = losskit::RowMatrix<T>;
template <class T>
using CMap = Eigen::Map<const Mat<T>>;
template <class T>
using MMap = Eigen::Map<Mat<T>>;

inline Eigen::Index ix(std::size_t v) { return Eigen::Index(v); }

constexpr double kInf = std::numeric_limits<double>::infinity();

std::string g_case;  // the case being run, printed with a violated oracle

template <class... A>
std::string str(const A&... a) {
  std::ostringstream os;
  os.precision(17);
  (os << ... << a);
  return os.str();
}

// With LOSSKIT_FUZZ_DUMP=<file> set, a violated oracle also writes the generated inputs there
// (text: one line per row of each matrix, then labels / targets), for diagnosis.
std::function<void(std::FILE*)> g_dump;

[[noreturn]] void violated(const std::string& what) {
  std::fprintf(stderr, "\n==== losskit fuzz: oracle violated: %s\n==== case: %s\n", what.c_str(), g_case.c_str());
  std::fflush(stderr);
  if (const char* path = std::getenv("LOSSKIT_FUZZ_DUMP"))
    if (std::FILE* f = g_dump ? std::fopen(path, "w") : nullptr) {
      g_dump(f);
      std::fclose(f);
    }
  std::abort();
}

template <class M>
void dump_matrix(std::FILE* f, const char* name, const M& m) {
  std::fprintf(f, "%s %ld %ld\n", name, long(m.rows()), long(m.cols()));
  for (Eigen::Index r = 0; r < m.rows(); ++r) {
    for (Eigen::Index c = 0; c < m.cols(); ++c) std::fprintf(f, "%.17g ", double(m(r, c)));
    std::fprintf(f, "\n");
  }
}
template <class V>
void dump_vector(std::FILE* f, const char* name, const V& v) {
  std::fprintf(f, "%s %ld\n", name, long(v.size()));
  for (const auto& e : v) std::fprintf(f, "%.17g ", double(e));
  std::fprintf(f, "\n");
}

// Bit equality; any NaN equals any NaN.
template <class T>
bool same(T a, T b) {
  return std::memcmp(&a, &b, sizeof(T)) == 0 || (std::isnan(a) && std::isnan(b));
}
// For sums formed in different association (0 + x vs x): -0 == +0 as well.
bool same_sum(double a, double b) { return a == b || (std::isnan(a) && std::isnan(b)); }

// A quiet NaN with a payload no kernel produces: an output entry still holding it was never written.
template <class T>
T sentinel() {
  if constexpr (sizeof(T) == 4) {
    const std::uint32_t b = 0x7fd1b2c3u;
    float f;
    std::memcpy(&f, &b, 4);
    return f;
  } else {
    const std::uint64_t b = 0x7ffdead0beefcafeull;
    double d;
    std::memcpy(&d, &b, 8);
    return d;
  }
}
template <class T>
bool is_sentinel(T v) {
  const T s = sentinel<T>();
  return std::memcmp(&v, &s, sizeof(T)) == 0;
}

struct Rng {  // splitmix64
  std::uint64_t s;
  std::uint64_t next() {
    std::uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  double u01() { return double(next() >> 11) * 0x1p-53; }
  std::size_t below(std::size_t n) { return n ? std::size_t(next() % n) : 0; }
  double normal() { return std::sqrt(-2.0 * std::log(1.0 - u01())) * std::cos(6.283185307179586 * u01()); }
  template <class X, std::size_t N>
  X pick(const X (&a)[N]) {
    return a[below(N)];
  }
};

template <class X, std::size_t N>
X pick(FuzzedDataProvider& in, const X (&a)[N]) {
  return a[in.ConsumeIntegralInRange<std::size_t>(0, N - 1)];
}

// ---- values -------------------------------------------------------------------------------------

constexpr int kModes = 15;
const char* const kModeNames[kModes] = {"normal",      "huge",        "ties",        "few-ints",   "ramp-up",
                                        "spike",       "very-neg",    "lead-ninf",   "sparse-ninf", "peaked",
                                        "ramp-down",   "near-ties",   "step",        "trail-ninf", "chunk-jump"};

// One row of n values by mode; chunk = the kernels' chunk length for T.
template <class T>
void fill_row(T* v, std::size_t n, int mode, Rng& g, std::size_t chunk) {
  const T ninf = -std::numeric_limits<T>::infinity();
  switch (mode) {
    case 0: {
      const double s = g.pick({0.5, 1.0, 3.0, 8.0});
      for (std::size_t j = 0; j < n; ++j) v[j] = T(s * g.normal());
      break;
    }
    case 1: {  // +-1e4, exactly or with noise
      const bool exact = g.below(2);
      for (std::size_t j = 0; j < n; ++j) v[j] = T((g.below(2) ? 1e4 : -1e4) + (exact ? 0.0 : g.normal()));
      break;
    }
    case 2: {
      const double c = g.pick({0.0, 1.0, -3.0, 1e4, -1e4, 30.0});
      for (std::size_t j = 0; j < n; ++j) v[j] = T(c);
      break;
    }
    case 3:
      for (std::size_t j = 0; j < n; ++j) v[j] = T(std::floor(2.0 * g.normal()));
      break;
    case 4: case 10: {  // later chunks far above (below) the earlier ones
      const double slope = (mode == 4 ? 1.0 : -1.0) * g.pick({6.0, 20.0, 100.0, 1e3, 1e4});
      for (std::size_t j = 0; j < n; ++j) v[j] = T(g.normal() + slope * double(j / chunk));
      break;
    }
    case 5: {  // one spike: random place, a chunk start or the last entry
      for (std::size_t j = 0; j < n; ++j) v[j] = T(g.normal());
      const std::size_t at = g.pick({g.below(n), std::min(n - 1, chunk * (1 + g.below(4))), n - 1});
      v[std::min(at, n - 1)] = T(g.pick({50.0, 1e3, 1e4}));
      break;
    }
    case 6: {
      const double s = g.pick({0.0, 1.0});
      for (std::size_t j = 0; j < n; ++j) v[j] = T(-1e4 + s * g.normal());
      break;
    }
    case 7: {  // a leading run of -inf (up to a whole chunk and more), then finite
      const std::size_t len = std::min(n - 1, g.pick({g.below(n), chunk, chunk + 1, chunk - 1, n - 1}));
      for (std::size_t j = 0; j < n; ++j) v[j] = j < len ? ninf : T(3.0 * g.normal());
      break;
    }
    case 8: {  // masked vocabulary
      const double p = g.pick({0.1, 0.5, 0.95});
      for (std::size_t j = 0; j < n; ++j) v[j] = g.u01() < p ? ninf : T(3.0 * g.normal());
      v[g.below(n)] = T(g.normal());
      break;
    }
    case 9: {  // one-hot
      for (std::size_t j = 0; j < n; ++j) v[j] = T(-30.0);
      v[g.below(n)] = T(30.0);
      break;
    }
    case 11: {  // near ties: c (1 + k eps)
      const double c = g.pick({5.0, -7.0, 1e3});
      for (std::size_t j = 0; j < n; ++j)
        v[j] = T(c) * (T(1) + T(g.below(3)) * std::numeric_limits<T>::epsilon());
      break;
    }
    case 12: {  // a step up anywhere
      const std::size_t cut = g.below(n);
      const double jump = g.pick({10.0, 100.0, 1e4});
      for (std::size_t j = 0; j < n; ++j) v[j] = T(g.normal() + (j >= cut ? jump : 0.0));
      break;
    }
    case 13: {  // -inf after a cut
      const std::size_t cut = 1 + g.below(n);
      for (std::size_t j = 0; j < n; ++j) v[j] = j < cut ? T(2.0 * g.normal()) : ninf;
      break;
    }
    default: {  // the last chunk jumps by a lot (the chunk to redo is the last one)
      const std::size_t last = n > chunk ? ((n - 1) / chunk) * chunk : n / 2;
      const double jump = g.pick({8.0, 40.0, 1e4});
      for (std::size_t j = 0; j < n; ++j) v[j] = T(g.normal() + (j >= last ? jump : 0.0));
      break;
    }
  }
}

template <class T>
bool finite_row_has(const T* v, std::size_t n) {
  for (std::size_t j = 0; j < n; ++j)
    if (std::isfinite(v[j])) return true;
  return false;
}
template <class T>
bool no_nan_or_pinf(const T* v, std::size_t n) {
  for (std::size_t j = 0; j < n; ++j)
    if (std::isnan(v[j]) || v[j] == std::numeric_limits<T>::infinity()) return false;
  return true;
}
// log_softmax of a row in double, rounded to T (a log-probability input); -inf stays.
template <class T>
void to_log_probs(T* v, std::size_t n) {
  double m = -kInf;
  for (std::size_t j = 0; j < n; ++j) m = std::max(m, double(v[j]));
  if (!std::isfinite(m)) return;
  double s = 0.0;
  for (std::size_t j = 0; j < n; ++j) s += std::exp(double(v[j]) - m);
  const double l = m + std::log(s);
  for (std::size_t j = 0; j < n; ++j) v[j] = T(double(v[j]) - l);
}

// ---- shapes -------------------------------------------------------------------------------------

// Columns with a bias toward chunk boundaries (chunk = 2048 floats / 1024 doubles) and SIMD widths.
std::size_t choose_cols(FuzzedDataProvider& in, std::size_t chunk, bool& wide) {
  wide = false;
  switch (in.ConsumeIntegralInRange<int>(0, 7)) {
    case 0: return in.ConsumeIntegralInRange<std::size_t>(1, 8);
    case 1: return in.ConsumeIntegralInRange<std::size_t>(1, 80);
    case 2: return chunk * in.ConsumeIntegralInRange<std::size_t>(1, 4) + in.ConsumeIntegralInRange<std::size_t>(0, 6) - 3;
    case 3: return chunk * in.ConsumeIntegralInRange<std::size_t>(1, 4) + in.ConsumeIntegralInRange<std::size_t>(0, 34) - 17;
    case 4: return in.ConsumeIntegralInRange<std::size_t>(1, 9000);
    case 5: {
      const std::size_t w = pick(in, {std::size_t(4), std::size_t(8), std::size_t(16), std::size_t(32)});
      return std::max<std::size_t>(1, w * in.ConsumeIntegralInRange<std::size_t>(1, 64) + in.ConsumeIntegralInRange<std::size_t>(0, 2) - 1);
    }
    case 6: return in.ConsumeIntegralInRange<std::size_t>(100, 3000);
    default:  // enough work for two threads (rows * cols >= 65536)
      wide = true;
      return in.ConsumeIntegralInRange<std::size_t>(1640, 9000);
  }
}

// ---- what a kernel call returns, and how two are compared ---------------------------------------

struct Out {
  double value = 0.0;
  Eigen::VectorXd per_row;
  std::int64_t count = 0;
  double denominator = 0.0;
  std::vector<double> sums;  // side outputs reduced over rows (z_loss, correct, ce, kl)
  Eigen::VectorXd rowvals;   // side outputs per row (lse)
};

Out from(const losskit::LossResult& r) {
  Out o;
  o.value = r.value;
  o.per_row = r.per_row;
  o.count = r.count;
  o.denominator = r.denominator;
  return o;
}

void compare_out(const Out& a, const Out& b, const char* what, bool denominators = true) {
  if (!same(a.value, b.value)) violated(str(what, ": value ", a.value, " vs ", b.value));
  if (a.per_row.size() != b.per_row.size()) violated(str(what, ": per_row sizes differ"));
  for (Eigen::Index r = 0; r < a.per_row.size(); ++r)
    if (!same(a.per_row[r], b.per_row[r])) violated(str(what, ": per_row[", r, "] ", a.per_row[r], " vs ", b.per_row[r]));
  if (a.count != b.count) violated(str(what, ": count ", a.count, " vs ", b.count));
  if (denominators && !same(a.denominator, b.denominator))
    violated(str(what, ": denominator ", a.denominator, " vs ", b.denominator));
  for (std::size_t k = 0; k < a.sums.size(); ++k)
    if (!same(a.sums[k], b.sums[k])) violated(str(what, ": side output ", k, " ", a.sums[k], " vs ", b.sums[k]));
  for (Eigen::Index r = 0; r < a.rowvals.size(); ++r)
    if (!same(a.rowvals[r], b.rowvals[r])) violated(str(what, ": row side output ", r, " ", a.rowvals[r], " vs ", b.rowvals[r]));
}

template <class T>
void compare_grad(const T* a, const T* b, std::size_t rows, std::size_t cols, const char* what) {
  std::size_t diff = 0, first = 0;
  for (std::size_t i = 0; i < rows * cols; ++i)
    if (!same(a[i], b[i])) {
      if (!diff) first = i;
      ++diff;
    }
  if (diff)
    violated(str(what, ": gradient differs at ", diff, " entries, first row ", first / cols, " col ", first % cols, ": ",
                 double(a[first]), " vs ", double(b[first])));
}

// ---- the row kernels ----------------------------------------------------------------------------

// The generated inputs of a row kernel.
template <class T>
struct Rows {
  std::size_t rows = 1, cols = 1;
  Mat<T> x, t;                      // student / logits; teacher / targets
  std::vector<std::int64_t> labels;  // a class per row, or ignore_index
  std::int64_t ignore_index = -100;
  bool use_labels = false;           // kernels with optional labels: pass them (the ignore mask)
  std::vector<double> weights;
  bool use_weights = false;
  std::vector<char> counted;         // the row counts (not ignored, weight != 0)
  Reduction reduction = Reduction::mean;
  double grad_scale = 1.0, normalizer = 0.0;

  double w(std::size_t r) const { return counted[r] ? (use_weights ? weights[r] : 1.0) : 0.0; }
  // What a reduction divides by (core/rows.hpp).
  double denominator() const {
    if (normalizer > 0.0) return normalizer;
    if (reduction != Reduction::mean) return 1.0;
    double s = 0.0;
    for (std::size_t r = 0; r < rows; ++r) s += w(r);
    return s;
  }
  // grad_scale * factor * w_r / D (0 when D = 0).
  double row_scale(std::size_t r, double factor = 1.0) const {
    const double d = denominator();
    return d > 0.0 ? grad_scale * factor * w(r) / d : 0.0;
  }
  const T* xr(std::size_t r) const { return x.data() + r * cols; }
  const T* tr(std::size_t r) const { return t.data() + r * cols; }
};

// A kernel under test: call(x, t, grad or null, first row, rows, threads) on rows [r0, r0 + nr).
template <class T>
struct Spec {
  std::function<Out(const T*, const T*, T*, std::size_t, std::size_t, int)> call;
  bool alias_x = true;          // grad may be the input (logits / student)
  bool alias_t = false;         // grad may be the targets / teacher
  bool zero_sum = true;         // gradient rows w.r.t. logits sum to expected_sum
  std::function<bool(std::size_t)> finite_row;                    // documented loss finite
  std::function<double(std::size_t, const Out&)> row_mag;         // scale of a row's gradient
  std::function<double(std::size_t, const Out&)> expected_sum;    // (default 0)
  double inv_scale = 1.0;  // what the logits are multiplied by before the softmax (1 / T, 1 / lambda)
  bool offset_tol = false; // known finding 04: tolerance grows with max |s_j - t_j| / T
};

// Finding 04 (an accuracy note, not fixed here): reverse_kl_div (and jsd with beta = 1, which
// runs it) forms its gradient q_j (x_j - y_j - KL) / T from two terms that each carry (s - t) / T
// and lse_q - lse_p, and relies on sum_i q_i = 1 exactly; when the student's and the teacher's
// logits differ by a large offset (or KL itself is large) both cancel in T and the gradient is
// off by about eps_T (terms per lane) |s - t| / T, relative to the row's scale: held to that.
template <class T>
double offset_scaled(const T* s, const T* t, std::size_t n, double inv_t) {
  double m = 0.0;
  for (std::size_t j = 0; j < n; ++j)
    if (std::isfinite(s[j]) && std::isfinite(t[j])) m = std::max(m, std::fabs(double(s[j]) - double(t[j])));
  return 4.0 * double(std::numeric_limits<T>::epsilon()) *
         double(std::min<std::size_t>(n, losskit::detail::chunk_elems<T>) + 64) * m * inv_t;
}

// Tolerance of a gradient row's sum, relative to sum |g| plus the row's scale: rounding of sums
// kept in T lanes within a chunk, and of exponents taken relative to shifts or lse near the
// largest |logit| / T (exp(shift - lse) carries eps_double |shift| relative error).
template <class T>
double sum_tolerance(std::size_t cols, double max_abs_scaled) {
  const double eps = std::numeric_limits<T>::epsilon(), eps_d = std::numeric_limits<double>::epsilon();
  return 4.0 * eps * double(std::min<std::size_t>(cols, losskit::detail::chunk_elems<T>) + 64) +
         32.0 * eps_d * (1.0 + max_abs_scaled);
}
// Entries below T's smallest normal number carry an absolute rounding error up to it.
template <class T>
double subnormal_floor(std::size_t cols) {
  return 4.0 * double(cols + 2) * double(std::numeric_limits<T>::min());
}
template <class T>
double max_abs_finite(const T* v, std::size_t n) {
  double m = 0.0;
  for (std::size_t j = 0; j < n; ++j)
    if (std::isfinite(v[j])) m = std::max(m, std::fabs(double(v[j])));
  return m;
}

template <class T>
void run_oracles(const Rows<T>& d, const Spec<T>& k, int inplace_threads) {
  const std::size_t R = d.rows, C = d.cols, N = R * C;
  const T* x = d.x.data();
  const T* t = d.t.data();
  Mat<T> g1(R, C);
  g1.setConstant(sentinel<T>());
  g_dump = [&d](std::FILE* f) {
    dump_matrix(f, "x", d.x);
    dump_matrix(f, "t", d.t);
    dump_vector(f, "labels", d.labels);
    dump_vector(f, "weights", d.weights);
    dump_vector(f, "counted", d.counted);
  };
  const Out base = k.call(x, t, g1.data(), 0, R, 1);
  for (std::size_t i = 0; i < N; ++i)
    if (is_sentinel(g1.data()[i])) violated(str("gradient entry never written: row ", i / C, " col ", i % C));
  for (std::size_t r = 0; r < R; ++r)
    if (!d.counted[r])
      for (std::size_t j = 0; j < C; ++j)
        if (!(g1(ix(r), ix(j)) == T(0)))
          violated(str("row ", r, " does not count, but its gradient at col ", j, " is ", double(g1(ix(r), ix(j)))));

  // (g) forward only
  compare_out(base, k.call(x, t, nullptr, 0, R, 1), "forward-only vs gradient overload");

  // (b) two threads (the row driver uses one below 65536 elements: the same code path)
  if (R >= 2 && double(R) * double(C) >= 65536.0) {
    Mat<T> g2(R, C);
    g2.setConstant(sentinel<T>());
    compare_out(base, k.call(x, t, g2.data(), 0, R, 2), "2 threads vs 1");
    compare_grad(g2.data(), g1.data(), R, C, "2 threads vs 1");
  }

  // (c) in place
  if (k.alias_x) {
    Mat<T> X = d.x;
    compare_out(base, k.call(X.data(), t, X.data(), 0, R, inplace_threads), "grad aliasing the input vs separate");
    compare_grad(X.data(), g1.data(), R, C, "grad aliasing the input vs separate");
  }
  if (k.alias_t) {
    Mat<T> Tt = d.t;
    compare_out(base, k.call(x, Tt.data(), Tt.data(), 0, R, inplace_threads), "grad aliasing the targets vs separate");
    compare_grad(Tt.data(), g1.data(), R, C, "grad aliasing the targets vs separate");
  }

  // (d) one row at a time (same denominator: reduction none / sum, or a normalizer)
  if (d.reduction != Reduction::mean || d.normalizer > 0.0) {
    Mat<T> g5(R, C);
    g5.setConstant(sentinel<T>());
    Out acc;
    acc.sums.assign(base.sums.size(), 0.0);
    std::vector<double> acc_abs(base.sums.size(), 0.0);
    acc.rowvals.resize(base.rowvals.size());
    for (std::size_t r = 0; r < R; ++r) {
      const Out o = k.call(d.xr(r), d.tr(r), g5.data() + r * C, r, 1, 1);
      acc.value += o.value;
      acc.count += o.count;
      if (d.reduction == Reduction::none && !same(o.per_row[0], base.per_row[ix(r)]))
        violated(str("row at a time: per_row[", r, "] ", o.per_row[0], " vs the matrix's ", base.per_row[ix(r)]));
      for (std::size_t s = 0; s < acc.sums.size(); ++s) {
        acc.sums[s] += o.sums[s];
        acc_abs[s] += std::fabs(o.sums[s]);
      }
      if (base.rowvals.size()) acc.rowvals[ix(r)] = o.rowvals[0];
    }
    if (!same_sum(acc.value, base.value)) violated(str("row at a time: value ", acc.value, " vs the matrix's ", base.value));
    if (acc.count != base.count) violated(str("row at a time: count ", acc.count, " vs ", base.count));
    // Side outputs reduced over rows (kd_loss ce / kl, cross_entropy z_loss) are sums of
    // w_r x_r / D that the compiler may contract into fma(w_r x_r, 1 / D, sum): equal up to one
    // rounding per row, not bitwise (the loss itself is summed from stored per-row values).
    for (std::size_t s = 0; s < acc.sums.size(); ++s)
      if (!same_sum(acc.sums[s], base.sums[s]) &&
          !(std::fabs(acc.sums[s] - base.sums[s]) <= 4.0 * double(R) * std::numeric_limits<double>::epsilon() * acc_abs[s]))
        violated(str("row at a time: side output ", s, " ", acc.sums[s], " vs the matrix's ", base.sums[s]));
    for (Eigen::Index r = 0; r < base.rowvals.size(); ++r)
      if (!same(acc.rowvals[r], base.rowvals[r]))
        violated(str("row at a time: row side output ", r, " ", acc.rowvals[r], " vs ", base.rowvals[r]));
    compare_grad(g5.data(), g1.data(), R, C, "row at a time vs the matrix");
  }

  // (f) rows whose loss is documented finite
  bool all_finite = true;
  for (std::size_t r = 0; r < R; ++r) {
    if (!d.counted[r]) continue;
    if (!k.finite_row(r)) {
      all_finite = false;
      continue;
    }
    if (d.reduction == Reduction::none && !std::isfinite(base.per_row[ix(r)]))
      violated(str("row ", r, ": documented finite, per_row = ", base.per_row[ix(r)]));
    double S = 0.0, A = 0.0;
    for (std::size_t j = 0; j < C; ++j) {
      const double v = double(g1(ix(r), ix(j)));
      if (!std::isfinite(v)) violated(str("row ", r, ": documented finite loss, gradient at col ", j, " is ", v));
      S += v;
      A += std::fabs(v);
    }
    if (!k.zero_sum) continue;
    const double E = k.expected_sum ? k.expected_sum(r, base) : 0.0;
    const double M = k.row_mag(r, base);
    const double tol =
        sum_tolerance<T>(C, k.inv_scale * std::max(max_abs_finite(d.xr(r), C), max_abs_finite(d.tr(r), C))) +
        (k.offset_tol ? offset_scaled(d.xr(r), d.tr(r), C, k.inv_scale) : 0.0);
    if (!(std::fabs(S - E) <= tol * (A + M + std::fabs(E)) + subnormal_floor<T>(C)))
      violated(str("row ", r, ": gradient sums to ", S, ", expected ", E, " (sum |g| ", A, ", row scale ", M,
                   ", tolerance ", tol * (A + M + std::fabs(E)), ")"));
  }
  if (all_finite && !std::isfinite(base.value)) violated(str("every counted row documented finite, value = ", base.value));
}

// Options shared by the row kernels: the row fields from the generated data.
template <class T, class O>
void set_row_fields(O& o, const Rows<T>& d, std::size_t r0, std::size_t nr, int threads) {
  o.reduction = d.reduction;
  o.grad_scale = d.grad_scale;
  o.normalizer = d.normalizer;
  o.threads = threads;
  o.ignore_index = d.ignore_index;
  if (d.use_weights) o.weights = losskit::Weights(d.weights.data() + r0, nr);
}

// A student/teacher kernel whose options hold the labels (divergences, topk_kl_div).
template <class T, class O, class F>
Spec<T> pair_spec(const Rows<T>& d, const O& opts, F f) {
  Spec<T> s;
  s.call = [&d, opts, f](const T* x, const T* t, T* g, std::size_t r0, std::size_t nr, int threads) {
    O o = opts;
    set_row_fields(o, d, r0, nr, threads);
    if (d.use_labels) o.labels = losskit::Labels(d.labels.data() + r0, nr);
    const CMap<T> X(x, ix(nr), Eigen::Index(d.cols)), Tm(t, ix(nr), Eigen::Index(d.cols));
    if (g) {
      MMap<T> G(g, ix(nr), Eigen::Index(d.cols));
      return from(f(X, Tm, &G, o));
    }
    return from(f(X, Tm, static_cast<MMap<T>*>(nullptr), o));
  };
  return s;
}

// The gradient overload of a student/teacher kernel `fn` (G a Map) or, for G == nullptr, its
// forward-only overload.
#define FUZZ_PAIR_CALL(fn)                                              \
  [](const auto& X, const auto& Tm, auto* G, const auto& q) {           \
    return G ? losskit::fn(X, Tm, *G, q) : losskit::fn(X, Tm, q);        \
  }

// No entry where the student is -inf and the teacher is not (teacher mass the student cannot
// have: KL(p || q) = +inf); both rows have mass.
template <class T>
bool kl_finite(const T* s, const T* t, std::size_t n) {
  for (std::size_t j = 0; j < n; ++j)
    if (std::isinf(s[j]) && s[j] < 0 && !(std::isinf(t[j]) && t[j] < 0)) return false;
  return no_nan_or_pinf(s, n) && no_nan_or_pinf(t, n) && finite_row_has(s, n) && finite_row_has(t, n);
}

// Known finding 02 (not fixed here): topk_kl_div with renormalize = true divides by Q_S, the
// student's probability mass on the teacher's top-k set S, taken from exps relative to the
// student's maximum over the whole row. When that maximum lies far above the student's maximum
// over S, Q_S underflows (loss -inf, NaN gradient) or a / Q_S overflows T (NaN gradient in the
// chunks without members), although the documented loss KL(softmax(t_S / T) || softmax(s_S / T))
// is finite. Rows with a gap of more than 80 (float) / 700 (double) times T are not held to the
// finite-loss oracle, so that fuzzing goes on past it.
template <class T>
bool topk_q_underflows(const T* s, const T* t, std::size_t n, std::size_t k, double temp) {
  if (k >= n) return false;
  std::vector<std::size_t> idx(n);
  for (std::size_t j = 0; j < n; ++j) idx[j] = j;
  // S: the first k in (teacher descending, index ascending); NaN never a member
  std::stable_sort(idx.begin(), idx.end(), [t](std::size_t a, std::size_t b) {
    if (std::isnan(t[a])) return false;
    if (std::isnan(t[b])) return true;
    return t[a] > t[b];
  });
  double in_s = -kInf, all = -kInf;
  for (std::size_t j = 0; j < k; ++j) in_s = std::max(in_s, double(s[idx[j]]));
  for (std::size_t j = 0; j < n; ++j) all = std::max(all, double(s[j]));
  return (all - in_s) / temp > (sizeof(T) == 4 ? 80.0 : 700.0);
}

// The row kernels' options from the bytes, the kernel, and the oracles.
template <class T>
void run_row_kernel(int kernel, Rows<T>& d, FuzzedDataProvider& in, Rng& g, int inplace_threads) {
  const std::size_t C = d.cols;
  Spec<T> spec;
  std::ostringstream desc;
  switch (kernel) {
    case 0: case 1: case 2: case 3: case 7: {  // kl_div, reverse_kl_div, jsd, tvd, topk_kl_div
      const double temp = pick(in, {1.0, 1.0, 0.5, 2.0, 0.1, 3.7});
      const bool t2 = in.ConsumeBool();
      const bool slp = in.ConsumeIntegralInRange<int>(0, 7) == 0, tlp = in.ConsumeIntegralInRange<int>(0, 7) == 0;
      const double beta = pick(in, {0.5, 0.0, 1.0, 0.1, 0.9, 1e-3, 0.999});
      const std::int64_t kk = pick(in, {std::int64_t(1), std::int64_t(2), std::int64_t(7), std::int64_t(100),
                                        std::int64_t(1000), std::int64_t(C) - 1, std::int64_t(C), std::int64_t(C) + 3,
                                        std::int64_t(1 + g.below(C)), std::int64_t(2040 + g.below(20))});
      const bool renorm = in.ConsumeBool();
      const bool logprobs = slp || tlp;
      // log-probability inputs: T = 1, rows normalised
      if (slp)
        for (std::size_t r = 0; r < d.rows; ++r) to_log_probs(d.x.data() + r * C, C);
      if (tlp)
        for (std::size_t r = 0; r < d.rows; ++r) to_log_probs(d.t.data() + r * C, C);
      const double T_ = logprobs ? 1.0 : temp;
      const double factor = t2 ? T_ * T_ : 1.0;
      auto set = [&](auto& o) {
        o.temperature = T_;
        o.scale_by_t_squared = t2;
        o.student_input = slp ? losskit::Input::log_probs : losskit::Input::logits;
        o.teacher_input = tlp ? losskit::Input::log_probs : losskit::Input::logits;
      };
      losskit::DivergenceOptions o;
      set(o);
      o.beta = beta;
      const char* names[] = {"kl_div", "reverse_kl_div", "jsd", "tvd", "", "", "", "topk_kl_div"};
      desc << names[kernel] << " T=" << T_ << " t2=" << t2 << " slp=" << slp << " tlp=" << tlp;
      if (kernel == 2) desc << " beta=" << beta;
      switch (kernel) {
        case 0: spec = pair_spec(d, o, FUZZ_PAIR_CALL(kl_div)); break;
        case 1: spec = pair_spec(d, o, FUZZ_PAIR_CALL(reverse_kl_div)); break;
        case 2: spec = pair_spec(d, o, FUZZ_PAIR_CALL(jsd)); break;
        case 3: spec = pair_spec(d, o, FUZZ_PAIR_CALL(tvd)); break;
        default: {
          losskit::TopkKlOptions k;
          set(k);
          k.k = std::max<std::int64_t>(1, kk);
          k.renormalize = renorm;
          desc << " k=" << k.k << " renorm=" << renorm;
          spec = pair_spec(d, k, FUZZ_PAIR_CALL(topk_kl_div));
        }
      }
      const Rows<T>* dp = &d;
      spec.zero_sum = !slp;
      const std::int64_t k_eff = std::max<std::int64_t>(1, kk);
      spec.finite_row = [dp, kernel, beta, C, renorm, k_eff, T_](std::size_t r) {
        const T *s = dp->xr(r), *t = dp->tr(r);
        if (kernel == 7 && renorm && topk_q_underflows(s, t, C, std::size_t(k_eff), T_)) return false;
        const bool kl = kernel == 0 || kernel == 7 || (kernel == 2 && beta == 0.0);
        const bool rkl = kernel == 1 || (kernel == 2 && beta == 1.0);
        if (kl) return kl_finite(s, t, C);
        if (rkl) return kl_finite(t, s, C);
        return no_nan_or_pinf(s, C) && no_nan_or_pinf(t, C) && finite_row_has(s, C) && finite_row_has(t, C);
      };
      spec.row_mag = [dp, factor, T_](std::size_t r, const Out&) { return 2.0 * std::fabs(dp->row_scale(r, factor)) / T_; };
      spec.inv_scale = 1.0 / T_;
      spec.offset_tol = kernel == 1 || (kernel == 2 && beta == 1.0);
      break;
    }
    case 4: {  // cross_entropy
      losskit::CrossEntropyOptions o;
      o.label_smoothing = pick(in, {0.0, 0.0, 0.1, 1.0, 0.5});
      o.z_loss = pick(in, {0.0, 0.0, 1e-4, 0.5});
      o.softcap = pick(in, {0.0, 0.0, 30.0, 1.0, 0.3});
      o.return_lse = true;
      auto cw = std::make_shared<std::vector<double>>();
      if (in.ConsumeIntegralInRange<int>(0, 3) == 0) {
        const double choices[] = {1.0, 0.0, 0.5, 3.0};
        cw->resize(C);
        for (double& v : *cw) v = g.pick(choices);
      }
      desc << "cross_entropy smoothing=" << o.label_smoothing << " z_loss=" << o.z_loss << " softcap=" << o.softcap
           << " class_weights=" << !cw->empty();
      spec.call = [&d, o, cw](const T* x, const T*, T* gr, std::size_t r0, std::size_t nr, int threads) {
        losskit::CrossEntropyOptions q = o;
        set_row_fields(q, d, r0, nr, threads);
        if (!cw->empty()) q.weight = losskit::Weights(*cw);
        const losskit::Labels lab(d.labels.data() + r0, nr);
        const CMap<T> X(x, ix(nr), Eigen::Index(d.cols));
        losskit::CrossEntropyResult res;
        if (gr) {
          MMap<T> G(gr, ix(nr), Eigen::Index(d.cols));
          res = losskit::cross_entropy(X, lab, G, q);
        } else {
          res = losskit::cross_entropy(X, lab, q);
        }
        Out out = from(res);
        out.sums = {res.z_loss, double(res.correct)};
        out.rowvals = res.lse;
        return out;
      };
      // D_z / D_ce (core: cross_entropy.hpp)
      double ratio = 1.0;
      if (!cw->empty() && d.reduction == Reduction::mean && !(d.normalizer > 0.0)) {
        double dce = 0.0;
        for (std::size_t r = 0; r < d.rows; ++r)
          if (d.w(r) != 0.0) dce += d.w(r) * (*cw)[std::size_t(d.labels[r])];
        ratio = dce > 0.0 ? d.denominator() / dce : 0.0;
      }
      const Rows<T>* dp = &d;
      const double eps = o.label_smoothing, zc = o.z_loss;
      const bool cap = o.softcap > 0.0;
      spec.zero_sum = !cap;  // the softcap's chain rule weighs each entry
      spec.finite_row = [dp, cw, eps, cap, C](std::size_t r) {
        const T* z = dp->xr(r);
        if (!no_nan_or_pinf(z, C)) return false;
        if (cap) return true;  // -inf logits become -cap
        if (!finite_row_has(z, C) || !std::isfinite(z[dp->labels[r]])) return false;
        if (eps > 0.0)
          for (std::size_t j = 0; j < C; ++j)
            if (!std::isfinite(z[j]) && (cw->empty() || (*cw)[j] > 0.0)) return false;
        return true;
      };
      double maxw = 1.0;
      for (double v : *cw) maxw = std::max(maxw, v);
      spec.row_mag = [dp, ratio, eps, zc, maxw](std::size_t r, const Out& b) {
        const double s = std::fabs(dp->row_scale(r));
        return s * (ratio * maxw * (1.0 + 2.0 * eps) + 2.0 * zc * std::fabs(b.rowvals[ix(r)]));
      };
      spec.expected_sum = [dp, zc](std::size_t r, const Out& b) { return 2.0 * zc * b.rowvals[ix(r)] * dp->row_scale(r); };
      break;
    }
    case 5: {  // soft_cross_entropy: targets in t
      losskit::SoftCrossEntropyOptions o;
      o.label_smoothing = pick(in, {0.0, 0.0, 0.1, 1.0});
      o.temperature = pick(in, {1.0, 1.0, 0.5, 2.0, 0.1});
      const int tm = in.ConsumeIntegralInRange<int>(0, 4);
      auto cw = std::make_shared<std::vector<double>>();
      if (in.ConsumeIntegralInRange<int>(0, 3) == 0) {
        const double choices[] = {1.0, 0.0, 0.5, 3.0};
        cw->resize(C);
        for (double& v : *cw) v = g.pick(choices);
      }
      // targets: probabilities (softmax of the teacher row), one-hot, a few classes, arbitrary
      // (negative too), uniform; zero where the logits are -inf in half the cases
      const bool zero_at_ninf = in.ConsumeBool();
      for (std::size_t r = 0; r < d.rows; ++r) {
        if (!d.counted[r]) continue;
        T* t = d.t.data() + r * C;
        const T* z = d.xr(r);
        switch (tm) {
          case 0: {
            double m = -kInf, s = 0.0;
            for (std::size_t j = 0; j < C; ++j) m = std::max(m, double(t[j]));
            if (!std::isfinite(m)) m = 0.0;
            for (std::size_t j = 0; j < C; ++j) s += std::exp(double(t[j]) - m);
            for (std::size_t j = 0; j < C; ++j) t[j] = T(std::exp(double(t[j]) - m) / s);
            break;
          }
          case 1:
            for (std::size_t j = 0; j < C; ++j) t[j] = T(0);
            t[g.below(C)] = T(1);
            break;
          case 2:
            for (std::size_t j = 0; j < C; ++j) t[j] = T(0);
            for (int k = 0; k < 3; ++k) t[g.below(C)] = T(g.u01());
            break;
          case 3:
            for (std::size_t j = 0; j < C; ++j) t[j] = T(g.normal());
            break;
          default:
            for (std::size_t j = 0; j < C; ++j) t[j] = T(1.0 / double(C));
        }
        if (zero_at_ninf)
          for (std::size_t j = 0; j < C; ++j)
            if (std::isinf(z[j]) && z[j] < 0) t[j] = T(0);
      }
      desc << "soft_cross_entropy smoothing=" << o.label_smoothing << " T=" << o.temperature << " targets=" << tm
           << " class_weights=" << !cw->empty();
      const double temp = o.temperature, eps = o.label_smoothing;
      spec = pair_spec(d, o, [cw](const auto& X, const auto& Tm, auto* G, auto q) {
        if (!cw->empty()) q.weight = losskit::Weights(*cw);
        return G ? losskit::soft_cross_entropy(X, Tm, *G, q) : losskit::soft_cross_entropy(X, Tm, q);
      });
      spec.alias_t = true;  // "it may be the logits or the targets themselves"
      const Rows<T>* dp = &d;
      // u_i = w_i ((1 - eps) t_i + eps / V) as the kernel forms it (in T)
      auto u_at = [dp, cw, eps, C](std::size_t r, std::size_t j) {
        const T tp = std::fma(dp->tr(r)[j], T(1.0 - eps), T(eps / double(C)));
        return cw->empty() ? tp : T(T((*cw)[j]) * tp);
      };
      spec.finite_row = [dp, u_at, C](std::size_t r) {
        const T *z = dp->xr(r), *t = dp->tr(r);
        if (!no_nan_or_pinf(z, C) || !finite_row_has(z, C)) return false;
        for (std::size_t j = 0; j < C; ++j)
          if (!std::isfinite(t[j]) || (std::isinf(z[j]) && u_at(r, j) != T(0))) return false;
        return true;
      };
      spec.inv_scale = 1.0 / temp;
      spec.row_mag = [dp, u_at, temp, C](std::size_t r, const Out&) {
        double U = 0.0, A = 0.0;
        for (std::size_t j = 0; j < C; ++j) {
          U += double(u_at(r, j));
          A += std::fabs(double(u_at(r, j)));
        }
        return std::fabs(dp->row_scale(r)) * (std::fabs(U) + A) / temp;
      };
      break;
    }
    case 6: {  // kd_loss
      losskit::KdLossOptions o;
      o.alpha = pick(in, {0.5, 0.0, 1.0, 0.1});
      o.temperature = pick(in, {1.0, 1.0, 2.0, 0.5, 4.0});
      o.scale_by_t_squared = in.ConsumeBool();
      desc << "kd_loss alpha=" << o.alpha << " T=" << o.temperature << " t2=" << o.scale_by_t_squared;
      spec.call = [&d, o](const T* x, const T* t, T* gr, std::size_t r0, std::size_t nr, int threads) {
        losskit::KdLossOptions q = o;
        set_row_fields(q, d, r0, nr, threads);
        const losskit::Labels lab(d.labels.data() + r0, nr);
        const CMap<T> X(x, ix(nr), Eigen::Index(d.cols)), Tm(t, ix(nr), Eigen::Index(d.cols));
        losskit::KdResult res;
        if (gr) {
          MMap<T> G(gr, ix(nr), Eigen::Index(d.cols));
          res = losskit::kd_loss(X, Tm, lab, G, q);
        } else {
          res = losskit::kd_loss(X, Tm, lab, q);
        }
        Out out = from(res);
        out.sums = {res.ce, res.kl};
        return out;
      };
      spec.alias_t = true;  // "`grad` may be the student (or the teacher) logits"
      const Rows<T>* dp = &d;
      const double alpha = o.alpha, temp = o.temperature, t2 = o.scale_by_t_squared ? temp * temp : 1.0;
      spec.finite_row = [dp, alpha, C](std::size_t r) {
        const T *s = dp->xr(r), *t = dp->tr(r);
        if (!no_nan_or_pinf(s, C) || !no_nan_or_pinf(t, C) || !finite_row_has(s, C) || !finite_row_has(t, C)) return false;
        if (alpha != 0.0 && !std::isfinite(s[dp->labels[r]])) return false;
        return alpha == 1.0 || kl_finite(s, t, C);
      };
      spec.inv_scale = std::max(1.0, 1.0 / temp);
      spec.row_mag = [dp, alpha, temp, t2](std::size_t r, const Out&) {
        return 2.0 * std::fabs(dp->row_scale(r)) * (alpha + (1.0 - alpha) * t2 / temp);
      };
      break;
    }
    default: {  // ldr_kl, raw form
      losskit::LdrKlOptions o;
      o.normalize = false;
      o.margin = pick(in, {2.0, 0.0, 0.1, 1e3, -1.0});
      o.lambda = pick(in, {1.0, 0.03, 10.0, 1e-3});
      desc << "ldr_kl(raw) margin=" << o.margin << " lambda=" << o.lambda;
      spec.call = [&d, o](const T* x, const T*, T* gr, std::size_t r0, std::size_t nr, int threads) {
        losskit::LdrKlOptions q = o;
        set_row_fields(q, d, r0, nr, threads);
        const losskit::Labels lab(d.labels.data() + r0, nr);
        const CMap<T> X(x, ix(nr), Eigen::Index(d.cols));
        if (gr) {
          MMap<T> G(gr, ix(nr), Eigen::Index(d.cols));
          return from(losskit::ldr_kl(X, lab, G, q));
        }
        return from(losskit::ldr_kl(X, lab, q));
      };
      const Rows<T>* dp = &d;
      spec.finite_row = [dp, C](std::size_t r) {
        const T* z = dp->xr(r);
        return no_nan_or_pinf(z, C) && std::isfinite(z[dp->labels[r]]);
      };
      spec.row_mag = [dp](std::size_t r, const Out&) { return 2.0 * std::fabs(dp->row_scale(r)); };
      spec.inv_scale = 1.0 / o.lambda;
      break;
    }
  }
  desc << " | " << g_case;
  g_case = desc.str();
  run_oracles(d, spec, inplace_threads);
}

// The data of a row kernel: values, labels, ignored rows, weights, poisoned rows, edits.
template <class T>
void run_rows_case(int kernel, FuzzedDataProvider& in) {
  constexpr std::size_t chunk = losskit::detail::chunk_elems<T>;
  Rows<T> d;
  bool wide = false;
  d.cols = std::max<std::size_t>(1, std::min<std::size_t>(9000, choose_cols(in, chunk, wide)));
  d.rows = in.ConsumeIntegralInRange<std::size_t>(1, 40);
  if (wide) d.rows = std::max<std::size_t>(d.rows, (65536 + d.cols - 1) / d.cols);
  const std::size_t R = d.rows, C = d.cols;
  Rng g{in.ConsumeIntegral<std::uint64_t>()};

  int smodes[4], tmodes[4];
  const int ns = in.ConsumeIntegralInRange<int>(1, 4);
  for (int k = 0; k < ns; ++k) smodes[k] = in.ConsumeIntegralInRange<int>(0, kModes - 1);
  const int rel = in.ConsumeIntegralInRange<int>(0, 4);  // teacher: copy, noisy copy, independent (x2), negated
  const int nt = in.ConsumeIntegralInRange<int>(1, 4);
  for (int k = 0; k < nt; ++k) tmodes[k] = in.ConsumeIntegralInRange<int>(0, kModes - 1);
  const bool shared_mask = in.ConsumeIntegralInRange<int>(0, 3) != 0;
  d.x.resize(ix(R), ix(C));
  d.t.resize(ix(R), ix(C));
  for (std::size_t r = 0; r < R; ++r) {
    T* x = d.x.data() + r * C;
    T* t = d.t.data() + r * C;
    fill_row(x, C, smodes[r % std::size_t(ns)], g, chunk);
    switch (rel) {
      case 0: std::copy(x, x + C, t); break;
      case 1:
        for (std::size_t j = 0; j < C; ++j) t[j] = x[j] + T(0.1 * g.normal());
        break;
      case 4:
        for (std::size_t j = 0; j < C; ++j) t[j] = std::isinf(x[j]) ? x[j] : -x[j];
        break;
      default: fill_row(t, C, tmodes[r % std::size_t(nt)], g, chunk);
    }
    if (shared_mask) {  // masked vocabulary: -inf at the same classes in both
      for (std::size_t j = 0; j < C; ++j)
        if ((std::isinf(x[j]) && x[j] < 0) || (std::isinf(t[j]) && t[j] < 0))
          x[j] = t[j] = -std::numeric_limits<T>::infinity();
      if (!finite_row_has(x, C)) x[0] = t[0] = T(0);
    }
  }

  // labels: random, the argmax, the first / last class, a chunk boundary
  const int lmode = in.ConsumeIntegralInRange<int>(0, 5);
  d.labels.resize(R);
  for (std::size_t r = 0; r < R; ++r) {
    const int m = lmode == 5 ? int(g.below(5)) : lmode;
    const T* x = d.xr(r);
    std::size_t y = 0;
    switch (m) {
      case 0: y = g.below(C); break;
      case 1: y = std::size_t(std::max_element(x, x + C) - x); break;
      case 2: y = 0; break;
      case 3: y = C - 1; break;
      default: y = std::min(C - 1, chunk * (1 + g.below(4)) - g.below(2)); break;
    }
    d.labels[r] = std::int64_t(y);
  }
  d.ignore_index = pick(in, {std::int64_t(-100), std::int64_t(-100), std::int64_t(-1), std::int64_t(0)});
  const double p_ign = pick(in, {0.0, 0.0, 0.15, 0.5, 1.0});
  for (std::size_t r = 0; r < R; ++r)
    if (g.u01() < p_ign) d.labels[r] = d.ignore_index;
  // kernels with optional labels take them (the ignore mask) or not
  const bool labels_arg = kernel == 4 || kernel == 6 || kernel == 8;
  d.use_labels = labels_arg || in.ConsumeBool();
  d.use_weights = in.ConsumeIntegralInRange<int>(0, 2) == 0;
  d.weights.resize(R);
  for (std::size_t r = 0; r < R; ++r) d.weights[r] = g.pick({1.0, 1.0, 0.0, 0.5, 2.0, 1e-3});
  d.counted.resize(R);
  for (std::size_t r = 0; r < R; ++r)
    d.counted[r] = !(d.use_labels && d.labels[r] == d.ignore_index) && !(d.use_weights && d.weights[r] == 0.0);

  // edits: (row, col, which matrix, kind); NaN / +inf only rarely
  const int n_edits = in.ConsumeIntegralInRange<int>(0, 12);
  for (int e = 0; e < n_edits && in.remaining_bytes() > 0; ++e) {
    const std::size_t r = in.ConsumeIntegralInRange<std::size_t>(0, R - 1);
    const std::size_t c = in.ConsumeIntegralInRange<std::size_t>(0, C - 1);
    const int who = in.ConsumeIntegralInRange<int>(0, 2);
    const int kind = in.ConsumeIntegralInRange<int>(0, 15);
    T* row[2] = {d.x.data() + r * C, d.t.data() + r * C};
    for (int m = 0; m < 2; ++m) {
      if (who != 2 && who != m) continue;
      T* v = row[m];
      T mx = -std::numeric_limits<T>::infinity();
      for (std::size_t j = 0; j < C; ++j) mx = std::max(mx, v[j]);
      switch (kind) {
        case 0: case 1: v[c] = -std::numeric_limits<T>::infinity(); break;
        case 2: v[c] = T(1e4); break;
        case 3: v[c] = T(-1e4); break;
        case 4: case 5: v[c] = std::isfinite(mx) ? mx : T(0); break;  // a tie with the maximum
        case 6: v[c] = T(0); break;
        case 7: v[c] = T(60); break;
        case 8: v[c] = std::isfinite(mx) ? std::nextafter(mx, std::numeric_limits<T>::infinity()) : T(1); break;
        case 9: v[c] = std::numeric_limits<T>::denorm_min(); break;
        case 10: v[c] = std::isfinite(mx) ? mx + T(3) : T(3); break;   // just within a factor 16 (T = 1)
        case 11: v[c] = std::isfinite(mx) ? mx + T(2.8) : T(3); break;
        case 12: v[c] = T(-88.5); break;
        case 13: v[c] = T(-1e30); break;
        case 14: v[c] = std::numeric_limits<T>::quiet_NaN(); break;
        default: v[c] = std::numeric_limits<T>::infinity(); break;
      }
    }
  }
  // rows that do not count are never read: fill them with NaN, +inf or -inf
  const int poison = in.ConsumeIntegralInRange<int>(0, 3);
  if (poison)
    for (std::size_t r = 0; r < R; ++r)
      if (!d.counted[r]) {
        const T v = poison == 1 ? std::numeric_limits<T>::quiet_NaN()
                    : poison == 2 ? -std::numeric_limits<T>::infinity()
                                  : std::numeric_limits<T>::infinity();
        std::fill(d.x.data() + r * C, d.x.data() + (r + 1) * C, v);
        std::fill(d.t.data() + r * C, d.t.data() + (r + 1) * C, v);
      }

  d.reduction = pick(in, {Reduction::mean, Reduction::sum, Reduction::none});
  d.grad_scale = pick(in, {1.0, 1.0, 0.5, -2.0, 0.0, 1e-3});
  d.normalizer = pick(in, {0.0, 0.0, 0.0, 7.5});
  const int inplace_threads = in.ConsumeBool() ? 2 : 1;

  std::ostringstream os;
  os << (sizeof(T) == 4 ? "float" : "double") << " " << R << "x" << C << " smodes=";
  for (int k = 0; k < ns; ++k) os << kModeNames[smodes[k]] << (k + 1 < ns ? "," : "");
  os << " teacher=" << rel << " shared_mask=" << shared_mask << " labels=" << lmode << " ignore_index=" << d.ignore_index
     << " p_ignored=" << p_ign << " use_labels=" << d.use_labels << " use_weights=" << d.use_weights << " edits=" << n_edits
     << " poison=" << poison << " reduction=" << int(d.reduction) << " grad_scale=" << d.grad_scale
     << " normalizer=" << d.normalizer << " inplace_threads=" << inplace_threads;
  g_case = os.str();
  run_row_kernel(kernel, d, in, g, inplace_threads);
}

// ---- dpo_step / sequence_pair_step --------------------------------------------------------------

void compare_vec(const Eigen::VectorXd& a, const Eigen::VectorXd& b, const char* what) {
  if (a.size() != b.size()) violated(str(what, ": sizes ", a.size(), " vs ", b.size()));
  for (Eigen::Index i = 0; i < a.size(); ++i)
    if (!same(a[i], b[i])) violated(str(what, "[", i, "]: ", a[i], " vs ", b[i]));
}

// Field by field, bitwise (NaN == NaN).
#define FUZZ_SAME_FIELD(f) compare_vec(a.f, b.f, (std::string(what) + ": " #f).c_str())

void compare_logprobs(const losskit::SequenceLogprobs& a, const losskit::SequenceLogprobs& b, const char* what) {
  FUZZ_SAME_FIELD(sum);
  FUZZ_SAME_FIELD(mean);
  FUZZ_SAME_FIELD(tokens);
  FUZZ_SAME_FIELD(ref_sum);
  FUZZ_SAME_FIELD(ref_mean);
  FUZZ_SAME_FIELD(lse);
  FUZZ_SAME_FIELD(ref_lse);
  FUZZ_SAME_FIELD(token_logp);
  FUZZ_SAME_FIELD(ref_token_logp);
  FUZZ_SAME_FIELD(token_entropy);
}

void compare_pref(const losskit::PreferenceResult& a, const losskit::PreferenceResult& b, const char* what) {
  compare_out(from(a), from(b), what);
  FUZZ_SAME_FIELD(d_policy_chosen);
  FUZZ_SAME_FIELD(d_policy_rejected);
  FUZZ_SAME_FIELD(chosen_rewards);
  FUZZ_SAME_FIELD(rejected_rewards);
  FUZZ_SAME_FIELD(margins);
  if (!same(a.accuracy, b.accuracy)) violated(str(what, ": accuracy ", a.accuracy, " vs ", b.accuracy));
}

// pair_step == 0: dpo_step; 1: sequence_pair_step without a reference, a sigmoid pair loss.
template <class T>
void run_dpo_case(bool pair_step, FuzzedDataProvider& in) {
  constexpr std::size_t chunk = losskit::detail::chunk_elems<T>;
  using losskit::DpoLoss;
  const std::int64_t P = in.ConsumeIntegralInRange<std::int64_t>(1, 6);
  std::vector<std::int64_t> offsets{0};
  for (std::int64_t q = 0; q < 2 * P; ++q)
    offsets.push_back(std::min<std::int64_t>(40, offsets.back() + in.ConsumeIntegralInRange<std::int64_t>(0, 8)));
  if (offsets.back() == 0) offsets.back() = 1;
  const std::size_t R = std::size_t(offsets.back());
  bool wide = false;
  const std::size_t C = std::max<std::size_t>(1, std::min<std::size_t>(9000, choose_cols(in, chunk, wide)));
  Rng g{in.ConsumeIntegral<std::uint64_t>()};
  int modes[4], rmodes[4];
  const int ns = in.ConsumeIntegralInRange<int>(1, 4);
  for (int k = 0; k < ns; ++k) modes[k] = in.ConsumeIntegralInRange<int>(0, kModes - 1);
  const int rel = in.ConsumeIntegralInRange<int>(0, 3);
  for (int k = 0; k < 4; ++k) rmodes[k] = in.ConsumeIntegralInRange<int>(0, kModes - 1);

  Mat<T> policy(ix(R), ix(C)), ref(ix(R), ix(C));
  std::vector<std::int64_t> targets(R);
  const std::int64_t ignore = pick(in, {std::int64_t(-100), std::int64_t(0)});
  for (std::size_t r = 0; r < R; ++r) {
    T* z = policy.data() + r * C;
    T* a = ref.data() + r * C;
    fill_row(z, C, modes[r % std::size_t(ns)], g, chunk);
    if (rel == 0)
      std::copy(z, z + C, a);
    else if (rel == 1)
      for (std::size_t j = 0; j < C; ++j) a[j] = z[j] + T(0.2 * g.normal());
    else
      fill_row(a, C, rmodes[r % 4], g, chunk);
    for (std::size_t j = 0; j < C; ++j)  // masked vocabulary in both
      if ((std::isinf(z[j]) && z[j] < 0) || (std::isinf(a[j]) && a[j] < 0)) z[j] = a[j] = -std::numeric_limits<T>::infinity();
    // the target at a class both rows give mass
    std::size_t y = g.pick({g.below(C), std::size_t(std::max_element(z, z + C) - z), C - 1});
    for (std::size_t k = 0; k < C && !std::isfinite(z[y]); ++k) y = (y + 1) % C;
    if (!std::isfinite(z[y])) z[y] = a[y] = T(0);
    targets[r] = std::int64_t(y);
  }
  // row weights (loss_mask), ignored rows; rows that do not count get poisoned
  losskit::SequenceLogprobOptions so;
  so.ignore_index = ignore;
  const double p_zero = pick(in, {0.0, 0.2, 0.5});
  std::vector<double> mask(R, 1.0);
  for (std::size_t r = 0; r < R; ++r) {
    mask[r] = g.pick({1.0, 1.0, 0.5, 2.0});
    if (g.u01() < p_zero) {
      if (g.below(2))
        mask[r] = 0.0;
      else
        targets[r] = ignore;
    }
  }
  so.allow_empty_sequences = in.ConsumeIntegralInRange<int>(0, 3) == 0;
  // every sequence needs a counted row unless allow_empty_sequences
  for (std::int64_t q = 0; q < 2 * P; ++q) {
    const std::int64_t b = offsets[std::size_t(q)], e = offsets[std::size_t(q) + 1];
    if (b == e) {
      so.allow_empty_sequences = true;
      continue;
    }
    bool any = false;
    for (std::int64_t r = b; r < e; ++r) any |= mask[std::size_t(r)] != 0.0 && targets[std::size_t(r)] != ignore;
    if (!any && !so.allow_empty_sequences) {
      mask[std::size_t(b)] = 1.0;
      if (targets[std::size_t(b)] == ignore) targets[std::size_t(b)] = ignore == 0 ? std::int64_t(C > 1 ? 1 : 0) : 0;
      if (targets[std::size_t(b)] == ignore) so.allow_empty_sequences = true;  // C == 1 with ignore_index 0
      else {
        T* z = policy.data() + std::size_t(b) * C;
        T* a = ref.data() + std::size_t(b) * C;
        const std::size_t y = std::size_t(targets[std::size_t(b)]);
        if (!std::isfinite(z[y])) z[y] = a[y] = T(0);
      }
    }
  }
  std::vector<char> counted(R);
  for (std::size_t r = 0; r < R; ++r) counted[r] = mask[r] != 0.0 && targets[r] != ignore;
  const int poison = in.ConsumeIntegralInRange<int>(0, 3);
  if (poison)
    for (std::size_t r = 0; r < R; ++r)
      if (!counted[r]) {
        const T v = poison == 1 ? std::numeric_limits<T>::quiet_NaN()
                    : poison == 2 ? -std::numeric_limits<T>::infinity()
                                  : std::numeric_limits<T>::infinity();
        std::fill(policy.data() + r * C, policy.data() + (r + 1) * C, v);
        std::fill(ref.data() + r * C, ref.data() + (r + 1) * C, v);
      }
  so.loss_mask = losskit::Weights(mask);
  so.temperature = pick(in, {1.0, 1.0, 0.7, 2.0, 0.1});
  so.per_token = in.ConsumeBool();
  so.entropy = in.ConsumeIntegralInRange<int>(0, 3) == 0;
  const int inplace_threads = in.ConsumeBool() ? 2 : 1;

  // DPO options: per-pair loss types only (dpo_step rejects aot, aot_unpaired, sft, rpo_alpha)
  losskit::DpoOptions dopt;
  const DpoLoss types[] = {DpoLoss::sigmoid,  DpoLoss::robust,   DpoLoss::hinge,     DpoLoss::ipo,
                           DpoLoss::exo_pair, DpoLoss::nca_pair, DpoLoss::bco_pair,  DpoLoss::sppo_hard,
                           DpoLoss::apo_zero, DpoLoss::apo_down, DpoLoss::discopop,  DpoLoss::sigmoid_norm};
  dopt.loss_types.clear();
  const int ntypes = in.ConsumeIntegralInRange<int>(1, 3);
  for (int k = 0; k < ntypes; ++k) {
    const DpoLoss t = pick(in, types);
    if (std::find(dopt.loss_types.begin(), dopt.loss_types.end(), t) == dopt.loss_types.end()) dopt.loss_types.push_back(t);
  }
  auto has = [&](DpoLoss t) { return std::find(dopt.loss_types.begin(), dopt.loss_types.end(), t) != dopt.loss_types.end(); };
  if (in.ConsumeBool())
    for (std::size_t k = 0; k < dopt.loss_types.size(); ++k) dopt.loss_weights.push_back(g.pick({1.0, 0.25, 2.0, -1.0}));
  dopt.beta = pick(in, {0.1, 1e-6, 1e6, 0.5, 2.0});
  if (has(DpoLoss::sigmoid)) dopt.conservative_sigmoid = in.ConsumeIntegralInRange<int>(0, 3) == 0;
  if (has(DpoLoss::robust) && has(DpoLoss::exo_pair))
    dopt.label_smoothing = pick(in, {0.1, 0.3, 0.49});
  else if (has(DpoLoss::robust))
    dopt.label_smoothing = pick(in, {0.0, 0.1, 0.3});
  else if (has(DpoLoss::exo_pair))
    dopt.label_smoothing = pick(in, {1e-3, 0.1, 0.5, 0.9});
  else if (dopt.conservative_sigmoid)
    dopt.label_smoothing = pick(in, {0.0, 0.1, 1.0});
  if (has(DpoLoss::discopop)) dopt.discopop_tau = pick(in, {0.05, 1.0, 2.0, 0.5});
  if (has(DpoLoss::bco_pair)) dopt.bco_pair_delta = pick(in, {0.0, 0.5, -1.0});
  dopt.rpo_eta = pick(in, {0.0, 0.0, 0.3});
  dopt.reduction = pick(in, {Reduction::mean, Reduction::sum, Reduction::none});
  dopt.normalizer = pick(in, {0.0, 0.0, 3.0});
  dopt.grad_scale = pick(in, {1.0, 0.5, -1.0});
  std::vector<double> nc(static_cast<std::size_t>(P)), nr(static_cast<std::size_t>(P));
  for (auto& v : nc) v = double(1 + g.below(10));
  for (auto& v : nr) v = double(1 + g.below(10));
  if (has(DpoLoss::ipo) || has(DpoLoss::sigmoid_norm)) {
    dopt.chosen_lengths = losskit::Values(nc);
    dopt.rejected_lengths = losskit::Values(nr);
  }
  const double beta = dopt.beta;

  const losskit::SequenceLayout layout = losskit::SequenceLayout::offsets(offsets);
  std::ostringstream os;
  os << (pair_step ? "sequence_pair_step(no ref)" : "dpo_step") << " " << (sizeof(T) == 4 ? "float" : "double") << " "
     << R << "x" << C << " P=" << P << " offsets=";
  for (auto o : offsets) os << o << ",";
  os << " modes=";
  for (int k = 0; k < ns; ++k) os << kModeNames[modes[k]] << ",";
  os << " ref=" << rel << " ignore=" << ignore << " p_zero=" << p_zero << " allow_empty=" << so.allow_empty_sequences
     << " poison=" << poison << " T=" << so.temperature << " per_token=" << so.per_token << " entropy=" << so.entropy
     << " types=";
  for (auto t : dopt.loss_types) os << losskit::dpo_loss_name(t) << ",";
  os << " beta=" << beta << " ls=" << dopt.label_smoothing << " cons=" << dopt.conservative_sigmoid
     << " tau=" << dopt.discopop_tau << " delta=" << dopt.bco_pair_delta << " eta=" << dopt.rpo_eta
     << " reduction=" << int(dopt.reduction) << " normalizer=" << dopt.normalizer << " grad_scale=" << dopt.grad_scale
     << " inplace_threads=" << inplace_threads;
  g_case = os.str();

  // the reference-free pair loss of sequence_pair_step: sigmoid DPO on the policy sums alone
  auto pair_fn = [beta](double chosen, double rejected) {
    const double h = beta * (chosen - rejected);
    const double s = losskit::detail::sigmoid(-h);
    return losskit::PairUpstream{-beta * s, beta * s};
  };

  g_dump = [&](std::FILE* f) {
    dump_matrix(f, "policy", policy);
    dump_matrix(f, "ref", ref);
    dump_vector(f, "targets", targets);
    dump_vector(f, "mask", mask);
    dump_vector(f, "offsets", offsets);
  };
  // unfused: forward, the loss, backward
  Mat<T> g_ref(ix(R), ix(C));
  g_ref.setConstant(sentinel<T>());
  losskit::SequenceLogprobs f;
  losskit::PreferenceResult loss_ref;
  Eigen::VectorXd up(2 * P);
  so.threads = 1;
  if (!pair_step) {
    f = losskit::sequence_logprobs(policy, ref, targets, layout, so);
    loss_ref = losskit::dpo(f.sum.head(P), f.sum.tail(P), f.ref_sum.head(P), f.ref_sum.tail(P), dopt);
    up << loss_ref.d_policy_chosen, loss_ref.d_policy_rejected;
  } else {
    f = losskit::sequence_logprobs(policy, targets, layout, so);
    for (std::int64_t p = 0; p < P; ++p) {
      const losskit::PairUpstream u = pair_fn(f.sum[p], f.sum[P + p]);
      up[p] = u.chosen;
      up[P + p] = u.rejected;
    }
  }
  losskit::sequence_logprobs_backward(policy, targets, layout, up, g_ref, so, f);

  // fused, given threads and output
  struct Fused {
    losskit::SequenceLogprobs lp;
    losskit::PreferenceResult loss;
    std::vector<losskit::PairLogprobs> seen;
  };
  auto fused = [&](const Mat<T>& z, Mat<T>& out, int threads) {
    losskit::SequenceLogprobOptions o = so;
    o.threads = threads;
    Fused r;
    if (!pair_step) {
      losskit::DpoStepResult s = losskit::dpo_step(z, ref, targets, layout, out, dopt, o);
      r.lp = std::move(s.logprobs);
      r.loss = std::move(s.loss);
    } else {
      r.seen.assign(std::size_t(P), {});
      std::vector<losskit::PairLogprobs>* seen = &r.seen;
      r.lp = losskit::sequence_pair_step(
          z, targets, layout,
          [seen, pair_fn](const losskit::PairLogprobs& lp) {
            (*seen)[std::size_t(lp.pair)] = lp;
            return pair_fn(lp.chosen, lp.rejected);
          },
          out, o);
    }
    return r;
  };
  Mat<T> g1(ix(R), ix(C));
  g1.setConstant(sentinel<T>());
  const Fused a = fused(policy, g1, 1);
  // (e) fused vs unfused
  for (std::size_t i = 0; i < R * C; ++i)
    if (is_sentinel(g1.data()[i])) violated(str("fused: gradient entry never written: row ", i / C, " col ", i % C));
  compare_grad(g1.data(), g_ref.data(), R, C, "fused vs unfused");
  {
    losskit::SequenceLogprobs fu = f;  // the fused result has no kl_sum / token_kl
    compare_logprobs(a.lp, fu, "fused vs unfused logprobs");
  }
  if (!pair_step) compare_pref(a.loss, loss_ref, "fused vs unfused dpo");
  else
    for (std::int64_t p = 0; p < P; ++p) {
      const auto& s = a.seen[std::size_t(p)];
      if (s.pair != p || !same(s.chosen, f.sum[p]) || !same(s.rejected, f.sum[P + p]) ||
          !same(s.chosen_tokens, f.tokens[p]) || !same(s.rejected_tokens, f.tokens[P + p]))
        violated(str("sequence_pair_step: pair ", p, " callback saw chosen ", s.chosen, " rejected ", s.rejected,
                     ", forward sums ", f.sum[p], " ", f.sum[P + p]));
    }
  // (b) threads
  if (P >= 2 && double(R) * double(C) >= 65536.0) {
    Mat<T> g2(ix(R), ix(C));
    g2.setConstant(sentinel<T>());
    const Fused b = fused(policy, g2, 2);
    compare_grad(g2.data(), g1.data(), R, C, "fused: 2 threads vs 1");
    compare_logprobs(b.lp, a.lp, "fused: 2 threads vs 1");
    if (!pair_step) compare_pref(b.loss, a.loss, "fused: 2 threads vs 1");
  }
  // (c) in place
  {
    Mat<T> X = policy;
    const Fused c = fused(X, X, inplace_threads);
    compare_grad(X.data(), g1.data(), R, C, "fused: grad aliasing the logits vs separate");
    compare_logprobs(c.lp, a.lp, "fused: in place vs separate");
    if (!pair_step) compare_pref(c.loss, a.loss, "fused: in place vs separate");
  }
  // (f) finite inputs (targets are at classes with mass): finite gradient rows summing to ~0
  for (std::int64_t q = 0; q < 2 * P; ++q)
    for (std::int64_t r = offsets[std::size_t(q)]; r < offsets[std::size_t(q) + 1]; ++r) {
      const std::size_t ru = std::size_t(r);
      const double d_b = up[q] * mask[ru];
      if (!counted[ru]) {
        for (std::size_t j = 0; j < C; ++j)
          if (!(g1(ix(ru), ix(j)) == T(0)))
            violated(str("fused: row ", ru, " does not count, gradient at col ", j, " is ", double(g1(ix(ru), ix(j)))));
        continue;
      }
      // (d_b itself may be huge, e.g. discopop with tau > 1: only rows whose scale T can hold)
      if (!(std::fabs(d_b) / so.temperature < 1e-8 * double(std::numeric_limits<T>::max())) ||
          !no_nan_or_pinf(policy.data() + ru * C, C))
        continue;
      double S = 0.0, A = 0.0;
      for (std::size_t j = 0; j < C; ++j) {
        const double v = double(g1(ix(ru), ix(j)));
        if (!std::isfinite(v)) violated(str("fused: row ", ru, " (finite logits, d_b = ", d_b, "): gradient at col ", j, " is ", v));
        S += v;
        A += std::fabs(v);
      }
      const double M = 2.0 * std::fabs(d_b) / so.temperature;
      // Known finding 03 (not fixed here): the forward takes its statistics at 1/T rounded to T,
      // the backward forms pi with 1/T in double against that lse, so pi is off by a factor
      // exp(z (1/T - T(1/T))) ~ 1 + |z| |1/T - T(1/T)|: allowed for here.
      const double inv_t = 1.0 / so.temperature, skew = std::fabs(inv_t - double(T(inv_t)));
      const double zmax = max_abs_finite(policy.data() + ru * C, C);
      const double tol = sum_tolerance<T>(C, zmax * inv_t) + 2.0 * zmax * skew;
      if (!(std::fabs(S) <= tol * (A + M) + subnormal_floor<T>(C)))
        violated(str("fused: row ", ru, ": gradient sums to ", S, " (sum |g| ", A, ", d_b ", d_b, ")"));
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzedDataProvider in(data, size);
  const int kernel = in.ConsumeIntegralInRange<int>(0, 10);
  const bool dbl = in.ConsumeBool();
  try {
    if (kernel >= 9) {
      if (dbl)
        run_dpo_case<double>(kernel == 10, in);
      else
        run_dpo_case<float>(kernel == 10, in);
    } else {
      if (dbl)
        run_rows_case<double>(kernel, in);
      else
        run_rows_case<float>(kernel, in);
    }
  } catch (const std::exception& e) {
    violated(str("a valid input was rejected: ", e.what()));
  }
  g_dump = nullptr;
  return 0;
}
