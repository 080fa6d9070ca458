// Options, reductions, views and errors, shared by every divergence (exercised through kl_div
// and the kernels whose hyperparameters have ranges).
#include "test_support.hpp"

#include <stdexcept>
#include <string>

using lktest::RowMatrix;
using losskit::DivergenceOptions;
using losskit::Reduction;

namespace {
template <class Fn>
std::string error_of(Fn&& fn) {
  try {
    fn();
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "no exception";
}
bool has(const std::string& s, const char* part) { return s.find(part) != std::string::npos; }
}  // namespace

TEMPLATE_TEST_CASE("reductions: sum, mean over counted rows, none, weights, normalizer", "[options]", float, double) {
  const auto s = lktest::random_logits<TestType>(5, 64, 1), t = lktest::random_logits<TestType>(5, 64, 2);
  DivergenceOptions o;
  o.reduction = Reduction::none;
  const auto none = losskit::kl_div(s, t, o);
  REQUIRE(none.per_row.size() == 5);
  o.reduction = Reduction::sum;
  const auto sum = losskit::kl_div(s, t, o);
  CHECK_THAT(sum.value, Catch::Matchers::WithinRel(none.per_row.sum(), 1e-12));
  CHECK_THAT(none.value, Catch::Matchers::WithinRel(none.per_row.sum(), 1e-12));
  o.reduction = Reduction::mean;
  CHECK_THAT(losskit::kl_div(s, t, o).value, Catch::Matchers::WithinRel(sum.value / 5, 1e-12));

  SECTION("ignore_index rows are skipped: zero gradient, not counted") {
    const std::vector<std::int32_t> labels{3, -100, 1, -100, 0};
    o.labels = labels;
    RowMatrix<TestType> g = RowMatrix<TestType>::Constant(5, 64, TestType(9));
    const auto r = losskit::kl_div(s, t, g, o);
    CHECK(r.count == 3);
    CHECK(r.denominator == 3.0);
    CHECK_THAT(r.value, Catch::Matchers::WithinRel((none.per_row(0) + none.per_row(2) + none.per_row(4)) / 3, 1e-6));
    CHECK(g.row(1).cwiseAbs().maxCoeff() == TestType(0));
    CHECK(g.row(3).cwiseAbs().maxCoeff() == TestType(0));
    CHECK(g.row(0).cwiseAbs().maxCoeff() > TestType(0));
  }
  SECTION("weights: weighted mean divides by the weight sum; gradient scales with the weight") {
    const std::vector<double> w{1.0, 0.0, 2.0, 0.5, 1.0};
    o.weights = w;
    RowMatrix<TestType> g(5, 64), g1(5, 64);
    const auto r = losskit::kl_div(s, t, g, o);
    const double want = (none.per_row(0) + 2 * none.per_row(2) + 0.5 * none.per_row(3) + none.per_row(4)) / 4.5;
    CHECK_THAT(r.value, Catch::Matchers::WithinRel(want, 1e-6));
    CHECK(r.count == 4);
    losskit::kl_div(s, t, g1, {});
    CHECK((g.row(2) - g1.row(2) * TestType(2 * 5 / 4.5)).cwiseAbs().maxCoeff() <= TestType(1e-7));
    CHECK(g.row(1).cwiseAbs().maxCoeff() == TestType(0));
  }
  SECTION("normalizer replaces the denominator (gradient accumulation with a global count)") {
    o.normalizer = 100.0;
    CHECK_THAT(losskit::kl_div(s, t, o).value, Catch::Matchers::WithinRel(sum.value / 100, 1e-12));
  }
  SECTION("grad_scale multiplies the gradient only") {
    RowMatrix<TestType> g1(5, 64), g2(5, 64);
    const double v1 = losskit::kl_div(s, t, g1, o).value;
    o.grad_scale = -3.0;
    const double v2 = losskit::kl_div(s, t, g2, o).value;
    CHECK(v1 == v2);
    CHECK((g2 + TestType(3) * g1).cwiseAbs().maxCoeff() <= TestType(1e-7));
  }
}

TEMPLATE_TEST_CASE("views: Map with outer stride, row blocks, in-place gradient, tensors", "[views]", float, double) {
  const auto s = lktest::random_logits<TestType>(6, 40, 1), t = lktest::random_logits<TestType>(6, 40, 2);
  RowMatrix<TestType> g(6, 40);
  const double ref = losskit::kl_div(s, t, g, {}).value;

  SECTION("Map over a padded buffer (leading dimension 48)") {
    std::vector<TestType> bs(6 * 48, TestType(1e30)), bt(6 * 48, TestType(-1e30));
    for (int r = 0; r < 6; ++r)
      for (int c = 0; c < 40; ++c) {
        bs[std::size_t(r * 48 + c)] = s(r, c);
        bt[std::size_t(r * 48 + c)] = t(r, c);
      }
    using Map = Eigen::Map<const RowMatrix<TestType>, 0, Eigen::OuterStride<>>;
    Map ms(bs.data(), 6, 40, Eigen::OuterStride<>(48)), mt(bt.data(), 6, 40, Eigen::OuterStride<>(48));
    std::vector<TestType> bg(6 * 48, TestType(5));
    Eigen::Map<RowMatrix<TestType>, 0, Eigen::OuterStride<>> mg(bg.data(), 6, 40, Eigen::OuterStride<>(48));
    CHECK(losskit::kl_div(ms, mt, mg, {}).value == ref);
    CHECK(mg == g);
    CHECK(bg[40] == TestType(5));  // padding untouched
  }
  SECTION("a block of rows") {
    RowMatrix<TestType> gb = RowMatrix<TestType>::Zero(6, 40);
    const auto r = losskit::kl_div(s.middleRows(2, 3), t.middleRows(2, 3), gb.middleRows(2, 3), {});
    RowMatrix<TestType> g3(3, 40);
    const RowMatrix<TestType> s3 = s.middleRows(2, 3), t3 = t.middleRows(2, 3);
    CHECK(r.value == losskit::kl_div(s3, t3, g3, {}).value);
    CHECK(gb.middleRows(2, 3) == g3);
    CHECK(gb.row(0).cwiseAbs().maxCoeff() == TestType(0));
  }
  SECTION("gradient written over the student logits") {
    RowMatrix<TestType> inplace = s;
    CHECK(losskit::kl_div(inplace, t, inplace, {}).value == ref);
    CHECK(inplace == g);
  }
  SECTION("rank-3 row-major TensorMap [batch, seq, vocab]") {
    Eigen::TensorMap<Eigen::Tensor<const TestType, 3, Eigen::RowMajor>> ts(s.data(), 2, 3, 40), tt(t.data(), 2, 3, 40);
    Eigen::Tensor<TestType, 3, Eigen::RowMajor> tg(2, 3, 40);
    CHECK(losskit::kl_div(ts, tt, tg, {}).value == ref);
    CHECK(std::equal(g.data(), g.data() + g.size(), tg.data()));
  }
  SECTION("rank-2 Tensor") {
    Eigen::Tensor<TestType, 2, Eigen::RowMajor> ts(6, 40), tt(6, 40);
    std::copy(s.data(), s.data() + s.size(), ts.data());
    std::copy(t.data(), t.data() + t.size(), tt.data());
    CHECK(losskit::kl_div(ts, tt, {}).value == ref);
  }
}

TEST_CASE("errors name the function, the argument and the values; outputs stay untouched", "[errors]") {
  const auto s = lktest::random_logits<float>(4, 10, 1), t = lktest::random_logits<float>(4, 10, 2);
  RowMatrix<float> g = RowMatrix<float>::Constant(4, 10, 42.f);
  auto untouched = [&] { return (g.array() == 42.f).all(); };

  const auto t9 = lktest::random_logits<float>(4, 9, 3);
  auto e = error_of([&] { losskit::kl_div(s, t9, g, {}); });
  CHECK(has(e, "losskit::kl_div"));
  CHECK(has(e, "'teacher' has shape 4x9, expected 4x10"));

  RowMatrix<float> g5(5, 10);
  e = error_of([&] { losskit::reverse_kl_div(s, t, g5, {}); });
  CHECK(has(e, "losskit::reverse_kl_div"));
  CHECK(has(e, "'grad' has shape 5x10"));

  const RowMatrix<float> empty(4, 0);
  e = error_of([&] { losskit::tvd(empty, empty, {}); });
  CHECK(has(e, "'student' has shape 4x0"));

  DivergenceOptions o;
  o.temperature = 0.0;
  e = error_of([&] { losskit::kl_div(s, t, g, o); });
  CHECK(has(e, "'temperature' must be positive"));
  o.temperature = -1.0;
  CHECK(has(error_of([&] { losskit::kl_div(s, t, g, o); }), "got -1"));

  o = {};
  o.beta = 1.5;
  e = error_of([&] { losskit::jsd(s, t, g, o); });
  CHECK(has(e, "losskit::jsd: 'beta' must be in [0, 1], got 1.5"));

  o = {};
  for (double a : {0.0, 1.0, -0.2}) {
    o.skew_alpha = a;
    CHECK(has(error_of([&] { losskit::skew_kl_div(s, t, g, o); }), "'skew_alpha' must be in (0, 1)"));
    CHECK(has(error_of([&] { losskit::skew_reverse_kl_div(s, t, g, o); }), "'skew_alpha' must be in (0, 1)"));
  }

  o = {};
  const std::vector<float> w3{1, 1, 1};
  o.weights = w3;
  CHECK(has(error_of([&] { losskit::kl_div(s, t, g, o); }), "'weights' has 3 entries, expected one per row (4)"));
  const std::vector<float> wneg{1, -1, 1, 1};
  o.weights = wneg;
  CHECK(has(error_of([&] { losskit::kl_div(s, t, g, o); }), "'weights' must be finite and >= 0"));

  o = {};
  const std::vector<std::int64_t> l5{0, 1, 2, 3, 4};
  o.labels = l5;
  CHECK(has(error_of([&] { losskit::cauchy_schwarz_div(s, t, g, o); }), "'labels' has 5 entries"));

  o = {};
  o.student_input = losskit::Input::log_probs;
  o.temperature = 2.0;
  CHECK(has(error_of([&] { losskit::kl_div(s, t, g, o); }), "'temperature' must be 1 with log-probability inputs"));

  CHECK(has(error_of([&] { losskit::kl_div(s, t, const_cast<RowMatrix<float>&>(t), DivergenceOptions{}); }),
            "may alias 'student' but not 'teacher'"));
  CHECK(untouched());
}

// 300 x 8192 floats is 9.8 MB: written with streaming stores; each half stays below 8 MB. Rows
// are pipelined (each row's gradient goes out during the next row's pass), so this also checks
// the hand-over between rows, the last row of each thread, and both kinds of stores.
template <class Fn>
void check_large_gradient(const char* name, Fn&& fn) {
  CAPTURE(name);
  const auto s = lktest::random_logits<float>(300, 8192, 1), t = lktest::random_logits<float>(300, 8192, 2);
  RowMatrix<float> whole(300, 8192), parts = RowMatrix<float>::Zero(300, 8192);
  DivergenceOptions o;
  o.reduction = Reduction::sum;
  o.temperature = 1.5;
  const double v = fn(s, t, whole, o).value;
  const double v1 = fn(s.topRows(150), t.topRows(150), parts.topRows(150), o).value;
  const double v2 = fn(s.bottomRows(150), t.bottomRows(150), parts.bottomRows(150), o).value;
  CHECK_THAT(v, Catch::Matchers::WithinRel(v1 + v2, 1e-12));
  CHECK(whole == parts);
  RowMatrix<float> g2(300, 8192);
  o.threads = 2;
  CHECK(fn(s, t, g2, o).value == v);
  CHECK(g2 == whole);
}

TEST_CASE("large gradients (non-temporal stores) equal the same rows computed in small pieces", "[views]") {
#define LOSSKIT_LARGE(f) \
  check_large_gradient(#f, [](const auto& s, const auto& t, auto&& g, const DivergenceOptions& o) { return losskit::f(s, t, g, o); })
  LOSSKIT_LARGE(kl_div);
  LOSSKIT_LARGE(reverse_kl_div);
  LOSSKIT_LARGE(jsd);
  LOSSKIT_LARGE(tvd);
  LOSSKIT_LARGE(cauchy_schwarz_div);
#undef LOSSKIT_LARGE
}

TEST_CASE("float accuracy holds for logits far from zero (chunk shifts are exact)", "[accuracy]") {
  // Logits near 1000 with a spread of a few units: every chunk (2048 floats) records its shift
  // (the row's running maximum), and a rounding of a chunk's shift (ulp(1443) = 1.2e-4 in log2 units) would move
  // that chunk's probabilities by ~4e-5 relative. Row 1 splits its mass between two chunks,
  // where such an error no longer cancels in the normalisation (measured: 6e-6 gradient error
  // with the shift folded into an fma, 1e-7 with the exact difference).
  auto s = lktest::random_logits<double>(4, 5000, 1, 4.0), t = lktest::random_logits<double>(4, 5000, 2, 4.0);
  s.array() += 1000.0;
  t.array() += 998.0;
  for (int c : {100, 3000}) {
    s(1, c) += 9.0;
    t(1, c) += 8.0;
  }
  const RowMatrix<float> sf = s.cast<float>(), tf = t.cast<float>();
  const RowMatrix<double> sd = sf.cast<double>(), td = tf.cast<double>();
  for (double temp : {1.0, 0.7}) {
    DivergenceOptions o;
    o.temperature = temp;
    o.reduction = Reduction::sum;
    CAPTURE(temp);
    RowMatrix<float> gf(4, 5000);
    RowMatrix<double> gd(4, 5000);
    const double vf = losskit::kl_div(sf, tf, gf, o).value, vd = losskit::kl_div(sd, td, gd, o).value;
    CHECK_THAT(vf, Catch::Matchers::WithinRel(vd, 1e-5));
    CHECK((gf.cast<double>() - gd).cwiseAbs().maxCoeff() <= 1e-6);
    const double jf = losskit::jsd(sf, tf, gf, o).value, jd = losskit::jsd(sd, td, gd, o).value;
    CHECK_THAT(jf, Catch::Matchers::WithinRel(jd, 1e-5));
    CHECK((gf.cast<double>() - gd).cwiseAbs().maxCoeff() <= 1e-6);
  }
}

// Rows whose chunks (2048 floats) take their exps against the running maximum of the row:
// row 1's student and row 2's teacher jump by 200 in a later chunk (that chunk is redone against
// its own maximum), row 3 starts with more than a chunk of -inf in both inputs and continues
// near -1000 (a shift of 0 would flush that whole chunk to 0; it takes its own maximum). The
// reversed columns put every row's maximum in the first chunk: no chunk is redone there.
template <class Fn>
void check_chunk_shifts(const char* name, Fn&& fn, const lktest::RowRef& ref) {
  CAPTURE(name);
  const Eigen::Index n = 5000;
  RowMatrix<float> s = lktest::random_logits<float>(4, n, 3), t = lktest::random_logits<float>(4, n, 4);
  s.row(1).tail(900).array() += 200.0f;
  t.row(2).tail(n - 2048).array() += 200.0f;
  const float ninf = -std::numeric_limits<float>::infinity();
  s.row(3).array() -= 1000.0f;
  t.row(3).array() -= 1000.0f;
  s.row(3).head(2500).setConstant(ninf);
  t.row(3).head(2500).setConstant(ninf);
  const RowMatrix<float> sr = s.rowwise().reverse(), tr = t.rowwise().reverse();
  for (double temp : {1.0, 2.0}) {
    CAPTURE(temp);
    DivergenceOptions o;
    o.temperature = temp;
    o.reduction = Reduction::sum;
    RowMatrix<float> g(4, n), gr(4, n), grow(1, n);
    const double v = fn(s, t, g, o).value, vr = fn(sr, tr, gr, o).value;
    CHECK_THAT(v, Catch::Matchers::WithinRel(double(lktest::reference_mean(s, t, o, ref)) * 4, 1e-5));
    CHECK_THAT(v, Catch::Matchers::WithinRel(vr, 1e-5));
    CHECK((g - RowMatrix<float>(gr.rowwise().reverse())).cwiseAbs().maxCoeff() <= 1e-6f);
    CHECK(g.allFinite());
    // Each row alone (not pipelined) gives the same bits: a redone chunk leaves the row
    // before it alone.
    for (Eigen::Index r = 0; r < 4; ++r) {
      fn(s.row(r), t.row(r), grow, o);
      CHECK(grow == g.row(r));
    }
  }
}

TEST_CASE("chunks far above the row so far are redone; a leading run of -inf takes the next chunk's own maximum",
          "[accuracy]") {
#define LOSSKIT_SHIFTS(f, ref) \
  check_chunk_shifts(#f, [](const auto& s, const auto& t, auto&& g, const DivergenceOptions& o) { return losskit::f(s, t, g, o); }, ref)
  LOSSKIT_SHIFTS(kl_div, lktest::ref_kl);
  LOSSKIT_SHIFTS(reverse_kl_div, lktest::ref_rkl);
  LOSSKIT_SHIFTS(jsd, lktest::ref_jsd(0.5));
  LOSSKIT_SHIFTS(skew_kl_div, lktest::ref_skew_kl(0.1));
  LOSSKIT_SHIFTS(skew_reverse_kl_div, lktest::ref_skew_rkl(0.1));
  LOSSKIT_SHIFTS(tvd, lktest::ref_tvd);
  LOSSKIT_SHIFTS(cauchy_schwarz_div, lktest::ref_cs);
#undef LOSSKIT_SHIFTS
}

TEST_CASE("a dominant logit in a later chunk keeps lse exact (near-equal peaked rows)", "[accuracy]") {
  // A logit of 25 at column 3000 (the third chunk) and one of 23 at column 100 (the first), the
  // rest in [-1, 1]; the teacher is the student plus noise of 1e-3. The third chunk climbs less
  // than a factor 16 above the running maximum, so it is not redone: the peak's exp is taken at
  // an argument of about 2.9, with the exp's rounding (~1.7e-7 relative), and its chunk's sum
  // takes the exact one (ChunkedSoftmax::peak_fix). KL ~1e-7 then comes out within 1e-10
  // (measured 4.5e-11; without the fix 5.9e-8), in PairRow::stats (kl_div) and in
  // sequence_logprobs' k_t = -KL(rho || pi) (its own loop).
  const Eigen::Index n = 5000;
  std::mt19937 rng(60);
  std::uniform_real_distribution<double> u(-1, 1);
  RowMatrix<float> s(1, n), t(1, n);
  for (Eigen::Index i = 0; i < n; ++i) s(0, i) = float(u(rng));
  s(0, 100) = 23.0f;
  s(0, 3000) = 25.0f;
  for (Eigen::Index i = 0; i < n; ++i) t(0, i) = s(0, i) + float(1e-3 * u(rng));
  DivergenceOptions o;
  const double kl = losskit::kl_div(s, t, o).value;
  const double want = double(lktest::reference_mean(s, t, o, lktest::ref_kl));  // KL(p_t || q_s)
  CAPTURE(kl, want);
  CHECK(std::fabs(kl - want) <= 1e-10);
  const std::vector<std::int64_t> y{3000};
  losskit::SequenceLogprobOptions so;
  so.per_token = true;
  const auto f = losskit::sequence_logprobs(s, t, y, losskit::SequenceLayout::fixed(1, 1), so);
  const double k_t = f.token_kl[0];
  CAPTURE(k_t);
  CHECK(std::fabs(k_t + want) <= 1e-10);
}
