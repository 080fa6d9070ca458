// The divergence kernels against reference vectors computed by PyTorch in float64 with autograd
// (tests/reference/divergence_refs.txt, made by tests/reference/gen_divergence_refs.py). The
// inputs are regenerated here from their seeds (tests/reference_vectors.hpp).
//
// Tolerances are the library's accuracy contract and must not be loosened to make a test pass:
//   double: loss within 1e-10 relative (or 1e-12 absolute), gradient entries within 1e-10 absolute
//   float:  loss within 2e-5 relative (or 1e-6 absolute), gradient entries within 1e-6 absolute,
//           or 1e-6 relative for entries larger than 1 (an entry of 20 -- reverse KL of very
//           peaked rows -- cannot be held to 5e-8 relative in float)
// The gradient summaries of the wide cases (sum, sum of |g|, dot product with a fixed vector) are
// held to the per-entry tolerance times max(1, sum |g|): each entry's error scales with its size,
// and a sum of N entries of float rounding is not bounded by one entry's tolerance (the row sums
// of a softmax gradient are 0 only up to the rounding of sum q = 1, times sum |g|).

#include "losskit/losskit.hpp"

#include "catch_compat.hpp"
#include "reference_vectors.hpp"

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <set>
#include <string>
#include <vector>

namespace {

using losskit_test::DivergenceRecord;
using Catch::Matchers::WithinAbs;
using Catch::Matchers::WithinRel;

template <class T>
using Mat = losskit::RowMatrix<T>;

template <class T>
using KernelFn = losskit::LossResult (*)(const Mat<T>&, const Mat<T>&, Mat<T>&, const losskit::DivergenceOptions&);

template <class T>
struct Kernel {
  const char* name;
  KernelFn<T> fn;
};

// {"name", pointer to a lambda calling losskit::name with a gradient output}
#define LOSSKIT_REF_KERNEL(fn)                                                                 \
  Kernel<T> {                                                                                  \
    #fn, [](const Mat<T>& s, const Mat<T>& t, Mat<T>& g, const losskit::DivergenceOptions& o) { \
      return losskit::fn(s, t, g, o);                                                          \
    }                                                                                          \
  }

template <class T>
const std::vector<Kernel<T>>& kernel_table() {
  static const std::vector<Kernel<T>> table = {
      LOSSKIT_REF_KERNEL(kl_div),      LOSSKIT_REF_KERNEL(reverse_kl_div),      LOSSKIT_REF_KERNEL(jsd),
      LOSSKIT_REF_KERNEL(skew_kl_div), LOSSKIT_REF_KERNEL(skew_reverse_kl_div), LOSSKIT_REF_KERNEL(tvd),
      LOSSKIT_REF_KERNEL(cauchy_schwarz_div),
  };
  return table;
}

#undef LOSSKIT_REF_KERNEL

template <class T>
KernelFn<T> find_kernel(const std::string& name) {
  for (const auto& k : kernel_table<T>())
    if (name == k.name) return k.fn;
  return nullptr;
}

template <class T>
using Tolerance = losskit_test::ReferenceTolerance<T>;  // the accuracy contract (see the top of the file)

template <class T>
Mat<T> make_logits(std::uint64_t seed, const DivergenceRecord& r) {
  const auto v = losskit_test::reference_logits(seed, std::size_t(r.rows), std::size_t(r.cols), r.scale);
  Mat<T> m(r.rows, r.cols);
  for (int i = 0; i < r.rows; ++i)
    for (int j = 0; j < r.cols; ++j) m(i, j) = T(v[std::size_t(i) * std::size_t(r.cols) + std::size_t(j)]);
  return m;
}

losskit::Reduction reduction_of(const std::string& name) {
  if (name == "sum") return losskit::Reduction::sum;
  if (name == "none") return losskit::Reduction::none;
  REQUIRE(name == "mean");
  return losskit::Reduction::mean;
}

// Checks a loss value: relative tolerance, or absolute near 0.
template <class T>
void check_value(double got, double want) {
  CHECK_THAT(got, WithinRel(want, Tolerance<T>::value_rel) || WithinAbs(want, Tolerance<T>::value_abs));
}

template <class T>
void check_full_grad(const Mat<T>& grad, const DivergenceRecord& r) {
  // One assertion per record, on the worst entry (a NaN counts as the worst).
  double worst = 0.0;
  std::size_t worst_i = 0, over = 0;
  for (std::size_t i = 0; i < r.grad.size(); ++i) {
    const double d = std::abs(double(grad.data()[i]) - r.grad[i]);
    if (!(d <= Tolerance<T>::grad_abs * std::max(1.0, std::abs(r.grad[i])))) ++over;
    if (!(d <= worst)) {
      worst = d;
      worst_i = i;
      if (std::isnan(d)) break;
    }
  }
  const std::size_t row = worst_i / std::size_t(r.cols), col = worst_i % std::size_t(r.cols);
  INFO("worst gradient entry (" << row << ", " << col << "); entries over tolerance: " << over);
  CHECK(over == 0);
}

template <class T>
void check_grad_summary(const Mat<T>& grad, const DivergenceRecord& r) {
  const losskit_test::GradSums got = losskit_test::grad_sums(grad.data(), std::size_t(r.rows), std::size_t(r.cols));
  // Per-entry tolerance times max(1, sum |g|): see the top of the file. Still far stricter than
  // the rows * cols * tolerance the per-entry contract allows.
  const double entry = Tolerance<T>::grad_abs, tol = entry * std::max(1.0, r.grad_abs_sum);
  {
    INFO("sum of the gradient");
    CHECK_THAT(got.sum, WithinAbs(r.grad_sum, tol) || WithinRel(r.grad_sum, tol));
  }
  {
    INFO("sum of |gradient|");
    CHECK_THAT(got.abs_sum, WithinAbs(r.grad_abs_sum, tol) || WithinRel(r.grad_abs_sum, tol));
  }
  {
    INFO("gradient . w");
    CHECK_THAT(got.dot, WithinAbs(r.grad_dot, tol) || WithinRel(r.grad_dot, tol));
  }
  for (const auto& s : r.samples) {
    INFO("gradient entry (" << s.row << ", " << s.col << ")");
    CHECK_THAT(double(grad(s.row, s.col)), WithinAbs(s.value, entry * std::max(1.0, std::abs(s.value))));
  }
}

template <class T>
void check_record(const DivergenceRecord& r) {
  Catch::StringMaker<double>::precision = 17;  // show failing numbers in full
  INFO(r.describe());
  const KernelFn<T> fn = find_kernel<T>(r.kernel);
  REQUIRE(fn != nullptr);

  const Mat<T> student = make_logits<T>(r.seed_s, r);
  const Mat<T> teacher = make_logits<T>(r.seed_t, r);

  losskit::DivergenceOptions o;
  o.temperature = r.temperature;
  o.scale_by_t_squared = r.scale_by_t_squared;
  o.reduction = reduction_of(r.reduction);
  o.beta = r.beta;
  o.skew_alpha = r.alpha;
  std::vector<std::int64_t> labels;
  if (!r.ignored_rows.empty()) {
    labels.assign(std::size_t(r.rows), 0);
    for (int row : r.ignored_rows) labels[std::size_t(row)] = o.ignore_index;
    o.labels = labels;
  }

  Mat<T> grad = Mat<T>::Constant(r.rows, r.cols, T(12345));  // every entry must be overwritten
  const losskit::LossResult res = fn(student, teacher, grad, o);

  {
    INFO("loss value");
    check_value<T>(res.value, r.value);
  }
  if (!r.per_row.empty()) {
    REQUIRE(res.per_row.size() == Eigen::Index(r.rows));
    for (int i = 0; i < r.rows; ++i) {
      INFO("per-row loss " << i);
      check_value<T>(res.per_row(i), r.per_row[std::size_t(i)]);
    }
  }
  if (r.full_grad)
    check_full_grad(grad, r);
  else
    check_grad_summary(grad, r);
}

}  // namespace

TEST_CASE("splitmix64 generator matches the reference splitmix64", "[reference]") {
  // The first outputs of splitmix64 from state 0 (Vigna's reference implementation).
  CHECK(losskit_test::splitmix64(0, 0) == 0xE220A8397B1DCDAFull);
  CHECK(losskit_test::splitmix64(0, 1) == 0x6E789E6AA1B965F4ull);
  CHECK(losskit_test::splitmix64(0, 2) == 0x06C45D188009454Full);
  const double u = losskit_test::uniform01(0, 0);
  CHECK(u == double(0xE220A8397B1DCDAFull >> 11) * 0x1.0p-53);
  CHECK(u >= 0.0);
  CHECK(u < 1.0);
}

TEST_CASE("divergence reference file is complete and the inputs regenerate exactly", "[divergence][reference]") {
  const auto& records = losskit_test::divergence_records();
  REQUIRE(!records.empty());
  std::set<std::string> kernels;
  for (const auto& r : records) {
    INFO(r.describe());
    kernels.insert(r.kernel);
    CHECK(find_kernel<double>(r.kernel) != nullptr);
    CHECK(losskit_test::float_bits_hash(losskit_test::reference_logits(r.seed_s, std::size_t(r.rows),
                                                                       std::size_t(r.cols), r.scale)) == r.hash_s);
    CHECK(losskit_test::float_bits_hash(losskit_test::reference_logits(r.seed_t, std::size_t(r.rows),
                                                                       std::size_t(r.cols), r.scale)) == r.hash_t);
  }
  CHECK(kernels.size() == kernel_table<double>().size());
}

TEMPLATE_TEST_CASE("divergences match the PyTorch float64 reference", "[divergence][reference]", float, double) {
  const auto& records = losskit_test::divergence_records();
  REQUIRE(!records.empty());
  for (const auto& r : records) check_record<TestType>(r);
}
