// sequence_logprobs, sequence_logprobs_backward and token_logprobs_backward: values and gradients
// against PyTorch float64 reference vectors (tests/reference/sequence_logprobs_refs.txt, made by
// tests/reference/gen_sequence_logprobs_refs.py), central differences in double, masks and
// ignore_index, layouts, in-place gradients, thread independence, special values and errors.
//
// Reference tolerances (the accuracy contract):
//   double: values within 1e-10 relative (or 1e-12 absolute), gradient entries within 1e-10 absolute
//   float:  values within 2e-5 relative (or 1e-6 absolute), gradient entries within 1e-6 absolute

#include <losskit/preference/sequence_logprobs.hpp>

#include "reference_vectors.hpp"
#include "test_support.hpp"

#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace {

using losskit::RowMatrix;
using losskit::SequenceLayout;
using losskit::SequenceLogprobOptions;
using losskit::SequenceLogprobs;
using Labels64 = std::vector<std::int64_t>;
using ld = long double;

// ---- reference records ---------------------------------------------------------------------------

struct SeqRecord {
  int id = 0, rows = 0, cols = 0;
  std::uint64_t seed_z = 0, seed_a = 0, hash_z = 0, hash_a = 0;
  double scale = 0, temperature = 1;
  std::vector<std::int64_t> offsets, targets;
  std::vector<double> mask;  // empty: no mask
  std::vector<double> sum, mean, tokens, ref_sum, kl_sum;
  std::vector<double> token_logp, ref_token_logp, token_entropy, token_kl;
  std::vector<double> d_sum, d_token, d_kl;
  losskit_test::GradReference grad_seq, grad_tok;
};

std::vector<SeqRecord> load_records() {
  using losskit_test::detail::TokenLine;
  auto on_case = [](TokenLine& tok) {
    SeqRecord r;
    r.id = tok.integer();
    r.rows = tok.integer();
    r.cols = tok.integer();
    r.seed_z = tok.u64();
    r.seed_a = tok.u64();
    r.scale = tok.number();
    r.temperature = tok.number();
    return r;
  };
  auto on_field = [](TokenLine& tok, const std::string& key, SeqRecord& r) {
    const std::size_t rows = std::size_t(r.rows), B = r.offsets.empty() ? 0 : r.offsets.size() - 1;
    // Vectors of B (per sequence) or rows (per token) values, by key.
    const std::map<std::string, std::pair<std::vector<double>*, std::size_t>> lists{
        {"sum", {&r.sum, B}},
        {"mean", {&r.mean, B}},
        {"tokens", {&r.tokens, B}},
        {"ref_sum", {&r.ref_sum, B}},
        {"kl_sum", {&r.kl_sum, B}},
        {"d_sum", {&r.d_sum, B}},
        {"token_logp", {&r.token_logp, rows}},
        {"ref_token_logp", {&r.ref_token_logp, rows}},
        {"token_entropy", {&r.token_entropy, rows}},
        {"token_kl", {&r.token_kl, rows}},
        {"d_token", {&r.d_token, rows}},
        {"d_kl", {&r.d_kl, rows}},
    };
    if (const auto it = lists.find(key); it != lists.end()) {
      *it->second.first = tok.numbers(it->second.second);
    } else if (key == "inputs") {
      r.hash_z = tok.u64();
      r.hash_a = tok.u64();
    } else if (key == "offsets") {
      for (int n = tok.integer(); n > 0; --n) r.offsets.push_back(tok.integer());
    } else if (key == "targets") {
      for (std::size_t k = 0; k < rows; ++k) r.targets.push_back(tok.integer());
    } else if (key == "mask") {
      std::string first = tok.word();
      if (first != "none") {
        r.mask.push_back(std::stod(first));
        for (std::size_t k = 1; k < rows; ++k) r.mask.push_back(tok.number());
      }
    } else if (key == "grad_seq_full" || key == "grad_seq_summary") {
      r.grad_seq.read(tok, key == "grad_seq_full", r.rows, r.cols);
    } else if (key == "grad_tok_full" || key == "grad_tok_summary") {
      r.grad_tok.read(tok, key == "grad_tok_full", r.rows, r.cols);
    } else {
      tok.fail("unknown key '" + key + "'");
    }
  };
  return losskit_test::read_records(losskit_test::test_data_path("reference/sequence_logprobs_refs.txt"), on_case,
                                    on_field);
}

const std::vector<SeqRecord>& records() {
  static const std::vector<SeqRecord> r = load_records();
  return r;
}

template <class T>
RowMatrix<T> reference_matrix(std::uint64_t seed, int rows, int cols, double scale, std::uint64_t hash) {
  const auto v = losskit_test::reference_logits(seed, std::size_t(rows), std::size_t(cols), scale);
  REQUIRE(losskit_test::float_bits_hash(v) == hash);
  RowMatrix<T> m(rows, cols);
  for (int i = 0; i < rows * cols; ++i) m.data()[i] = T(v[std::size_t(i)]);
  return m;
}

template <class T>
double value_tol(double want) {
  using Tol = losskit_test::ReferenceTolerance<T>;
  return std::max(Tol::value_abs, Tol::value_rel * std::fabs(want));
}
template <class T>
double grad_tol() {
  return losskit_test::ReferenceTolerance<T>::grad_abs;
}

template <class T>
void check_values(const char* what, const Eigen::VectorXd& got, const std::vector<double>& want) {
  REQUIRE(std::size_t(got.size()) == want.size());
  for (std::size_t i = 0; i < want.size(); ++i) {
    CAPTURE(what, i, got[Eigen::Index(i)], want[i]);
    CHECK(std::fabs(got[Eigen::Index(i)] - want[i]) <= value_tol<T>(want[i]));
  }
}

template <class T>
void check_grad(const char* what, const RowMatrix<T>& g, const losskit_test::GradReference& ref) {
  const double tol = grad_tol<T>();
  CAPTURE(what);
  if (ref.full_grad) {
    double worst = 0;
    for (Eigen::Index i = 0; i < g.size(); ++i)
      worst = std::max(worst, std::fabs(double(g.data()[i]) - ref.grad[std::size_t(i)]));
    CAPTURE(worst);
    CHECK(worst <= tol);
    return;
  }
  const auto got = losskit_test::grad_sums(g.data(), std::size_t(g.rows()), std::size_t(g.cols()));
  CAPTURE(got.sum, ref.grad_sum, got.abs_sum, ref.grad_abs_sum, got.dot, ref.grad_dot);
  CHECK(std::fabs(got.sum - ref.grad_sum) <= tol * std::max(1.0, std::fabs(ref.grad_sum)));
  CHECK(std::fabs(got.abs_sum - ref.grad_abs_sum) <= tol * std::max(1.0, ref.grad_abs_sum));
  CHECK(std::fabs(got.dot - ref.grad_dot) <= tol * std::max(1.0, std::fabs(ref.grad_dot)));
  for (const auto& s : ref.samples) {
    CAPTURE(s.row, s.col);
    CHECK(std::fabs(double(g(s.row, s.col)) - s.value) <= tol);
  }
}

Eigen::VectorXd vec(const std::vector<double>& v) { return Eigen::Map<const Eigen::VectorXd>(v.data(), Eigen::Index(v.size())); }

// ---- helpers for the other tests -----------------------------------------------------------------

Labels64 targets_for(Eigen::Index rows, Eigen::Index cols, std::uint32_t seed) {
  Labels64 y(static_cast<std::size_t>(rows));
  for (std::size_t r = 0; r < y.size(); ++r)
    y[r] = std::int64_t(losskit_test::uniform01(seed, r) * double(cols)) % std::int64_t(cols);
  return y;
}

// long double reference of one row: log pi(y), entropy, k = sum rho (log pi - log rho).
struct RowRef {
  ld logp, entropy, kl;
};
template <class Row>
RowRef row_reference(const Row& z, const Row& a, std::int64_t y, double temperature) {
  const auto x = lktest::log_softmax(z, 1.0L / ld(temperature));
  const auto r = lktest::log_softmax(a, 1.0L / ld(temperature));
  RowRef out{x[std::size_t(y)], 0, 0};
  for (std::size_t i = 0; i < x.size(); ++i) {
    const ld p = std::exp(x[i]), q = std::exp(r[i]);
    if (p > 0) out.entropy -= p * x[i];
    if (q > 0) out.kl += q * (x[i] - r[i]);
  }
  return out;
}

template <class Fn>
std::string error_of(Fn&& fn, bool& out_of_range) {
  out_of_range = false;
  try {
    fn();
  } catch (const std::out_of_range& e) {
    out_of_range = true;
    return e.what();
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "no exception";
}
bool has(const std::string& s, const char* part) { return s.find(part) != std::string::npos; }

}  // namespace

// ---- reference vectors -----------------------------------------------------------------------------

TEMPLATE_TEST_CASE("sequence_logprobs: values and gradients match PyTorch float64", "[sequence_logprobs][reference]",
                   float, double) {
  using T = TestType;
  for (const SeqRecord& rec : records()) {
    CAPTURE(rec.id, rec.rows, rec.cols, rec.temperature, rec.mask.size());
    const auto z = reference_matrix<T>(rec.seed_z, rec.rows, rec.cols, rec.scale, rec.hash_z);
    const auto a = reference_matrix<T>(rec.seed_a, rec.rows, rec.cols, rec.scale, rec.hash_a);
    const auto layout = SequenceLayout::offsets(rec.offsets);
    SequenceLogprobOptions o;
    o.temperature = rec.temperature;
    o.loss_mask = rec.mask;
    o.per_token = true;
    o.entropy = true;
    o.allow_empty_sequences = true;  // some records have empty and all-masked sequences

    const SequenceLogprobs f = losskit::sequence_logprobs(z, a, rec.targets, layout, o);
    check_values<T>("sum", f.sum, rec.sum);
    check_values<T>("mean", f.mean, rec.mean);
    check_values<T>("tokens", f.tokens, rec.tokens);
    check_values<T>("ref_sum", f.ref_sum, rec.ref_sum);
    check_values<T>("kl_sum", f.kl_sum, rec.kl_sum);
    check_values<T>("token_logp", f.token_logp, rec.token_logp);
    check_values<T>("ref_token_logp", f.ref_token_logp, rec.ref_token_logp);
    check_values<T>("token_entropy", f.token_entropy, rec.token_entropy);
    check_values<T>("token_kl", f.token_kl, rec.token_kl);

    // Without reference logits: the same policy values, bit for bit.
    const SequenceLogprobs f0 = losskit::sequence_logprobs(z, rec.targets, layout, o);
    CHECK(f0.sum == f.sum);
    CHECK(f0.token_logp == f.token_logp);
    CHECK(f0.token_entropy == f.token_entropy);
    CHECK(f0.ref_sum.size() == 0);
    CHECK(f0.token_kl.size() == 0);

    // Gradients: from the forward's lse (one streaming pass) and with the statistics recomputed.
    RowMatrix<T> g1(rec.rows, rec.cols), g2(rec.rows, rec.cols);
    losskit::sequence_logprobs_backward(z, rec.targets, layout, vec(rec.d_sum), g1, o, f0);
    losskit::sequence_logprobs_backward(z, rec.targets, layout, vec(rec.d_sum), g2, o);
    check_grad<T>("sequence backward, forward lse", g1, rec.grad_seq);
    check_grad<T>("sequence backward, recomputed", g2, rec.grad_seq);
    losskit::token_logprobs_backward(z, a, rec.targets, vec(rec.d_token), vec(rec.d_kl), g1, o, f);
    losskit::token_logprobs_backward(z, a, rec.targets, vec(rec.d_token), vec(rec.d_kl), g2, o);
    check_grad<T>("token backward with KL, forward lse", g1, rec.grad_tok);
    check_grad<T>("token backward with KL, recomputed", g2, rec.grad_tok);
  }
}

// ---- finite differences ----------------------------------------------------------------------------

TEST_CASE("sequence_logprobs_backward: central differences through f = sum_b c_b sum_b", "[sequence_logprobs][fd]") {
  const int cols = GENERATE(1, 3, 17, 1000);
  const double temperature = GENERATE(1.0, 2.0);
  const int mask_kind = GENERATE(0, 1, 2);  // none, 0/1 mask, weights
  const bool use_forward = GENERATE(false, true);
  CAPTURE(cols, temperature, mask_kind, use_forward);
  const Eigen::Index rows = cols >= 1000 ? 4 : 7;
  const auto z = lktest::random_logits<double>(rows, cols, 11u + std::uint32_t(cols));
  auto y = targets_for(rows, cols, 5u);
  y[1] = -100;
  const auto layout = rows == 7 ? SequenceLayout::offsets({0, 3, 3, 7}) : SequenceLayout::fixed(2, 2);
  std::vector<double> mask(std::size_t(rows), 1.0);
  if (mask_kind == 1) mask[std::size_t(rows) - 2] = 0.0;
  if (mask_kind == 2)
    for (std::size_t r = 0; r < mask.size(); ++r) mask[r] = 0.25 + 0.5 * double(r % 3);
  SequenceLogprobOptions o;
  o.temperature = temperature;
  o.allow_empty_sequences = true;  // sequence 1 of the 7-row layout is empty
  if (mask_kind != 0) o.loss_mask = mask;
  Eigen::VectorXd c(layout.sequences());
  for (Eigen::Index b = 0; b < c.size(); ++b) c[b] = 0.7 - 0.9 * double(b);
  lktest::check_gradient_fd(
      [&](const RowMatrix<double>& x, RowMatrix<double>* g) {
        const auto f = losskit::sequence_logprobs(x, y, layout, o);
        if (g) {
          if (use_forward)
            losskit::sequence_logprobs_backward(x, y, layout, c, *g, o, f);
          else
            losskit::sequence_logprobs_backward(x, y, layout, c, *g, o);
        }
        return c.dot(f.sum);
      },
      z);
}

TEST_CASE("token_logprobs_backward: central differences through logp_t and the KL term k_t",
          "[sequence_logprobs][fd]") {
  const int cols = GENERATE(1, 3, 17, 1000);
  const double temperature = GENERATE(1.0, 0.5);
  const bool with_ref = GENERATE(false, true);
  const bool use_forward = GENERATE(false, true);
  CAPTURE(cols, temperature, with_ref, use_forward);
  const Eigen::Index rows = cols >= 1000 ? 3 : 6;
  const auto z = lktest::random_logits<double>(rows, cols, 21u + std::uint32_t(cols));
  const auto a = lktest::random_logits<double>(rows, cols, 31u + std::uint32_t(cols));
  auto y = targets_for(rows, cols, 7u);
  y[0] = -100;
  std::vector<double> mask(std::size_t(rows), 1.0);
  mask[std::size_t(rows) - 1] = 0.0;
  SequenceLogprobOptions o;
  o.temperature = temperature;
  o.loss_mask = mask;
  o.per_token = true;
  const auto layout = SequenceLayout::fixed(1, rows);
  Eigen::VectorXd dt(rows), dk(rows);
  for (Eigen::Index r = 0; r < rows; ++r) {
    dt[r] = 0.3 + 0.2 * double(r);
    dk[r] = -0.8 + 0.35 * double(r);
  }
  lktest::check_gradient_fd(
      [&](const RowMatrix<double>& x, RowMatrix<double>* g) {
        if (!with_ref) {
          const auto f = losskit::sequence_logprobs(x, y, layout, o);
          if (g) {
            if (use_forward)
              losskit::token_logprobs_backward(x, y, dt, *g, o, f);
            else
              losskit::token_logprobs_backward(x, y, dt, *g, o);
          }
          return dt.dot(f.token_logp);
        }
        const auto f = losskit::sequence_logprobs(x, a, y, layout, o);
        if (g) {
          if (use_forward)
            losskit::token_logprobs_backward(x, a, y, dt, dk, *g, o, f);
          else
            losskit::token_logprobs_backward(x, a, y, dt, dk, *g, o);
        }
        return dt.dot(f.token_logp) + dk.dot(f.token_kl);
      },
      z);
}

// ---- semantics ---------------------------------------------------------------------------------------

TEMPLATE_TEST_CASE("sequence_logprobs: masks, ignore_index, weights, empty and all-masked sequences",
                   "[sequence_logprobs]", float, double) {
  using T = TestType;
  const Eigen::Index rows = 8, cols = 37;
  const auto z = lktest::random_logits<T>(rows, cols, 3u);
  auto y = targets_for(rows, cols, 9u);
  y[0] = -100;
  y[5] = y[6] = -100;
  const std::vector<float> mask{1, 0, 2.5f, 1, 0.5f, 0, 1, 1};  // rows 4..6: one sequence, all weight 0
  SequenceLogprobOptions o;
  o.loss_mask = mask;
  o.per_token = true;
  o.temperature = 1.3;
  o.allow_empty_sequences = true;  // else sequences 1 and 3 are errors (see the section below)
  const auto layout = SequenceLayout::offsets({0, 4, 4, 5, 7, 8});  // 5 sequences, one empty
  const auto f = losskit::sequence_logprobs(z, y, layout, o);
  // Per-row references: w_t = mask, 0 where the target is ignore_index.
  std::vector<double> w(static_cast<std::size_t>(rows)), lp(static_cast<std::size_t>(rows), 0.0);
  for (Eigen::Index r = 0; r < rows; ++r) {
    w[std::size_t(r)] = y[std::size_t(r)] == -100 ? 0.0 : double(mask[std::size_t(r)]);
    if (w[std::size_t(r)] != 0.0)
      lp[std::size_t(r)] = double(row_reference(z.row(r), z.row(r), y[std::size_t(r)], o.temperature).logp);
  }
  const double tol = std::is_same_v<T, float> ? 1e-5 : 1e-12;
  for (Eigen::Index r = 0; r < rows; ++r) CHECK(std::fabs(f.token_logp[r] - lp[std::size_t(r)]) <= tol);
  CHECK(f.token_logp[0] == 0.0);
  CHECK(f.token_logp[1] == 0.0);
  CHECK(std::isnan(f.lse[0]));  // not read
  CHECK(std::isfinite(f.lse[2]));
  const double s0 = w[2] * lp[2] + w[3] * lp[3];
  CHECK(std::fabs(f.sum[0] - s0) <= tol);
  CHECK(f.tokens[0] == 3.5);
  CHECK(std::fabs(f.mean[0] - s0 / 3.5) <= tol);
  CHECK(f.sum[1] == 0.0);  // empty
  CHECK(f.mean[1] == 0.0);
  CHECK(f.tokens[1] == 0.0);
  CHECK(f.tokens[2] == 0.5);
  CHECK(f.sum[3] == 0.0);  // all weight 0
  CHECK(f.mean[3] == 0.0);
  CHECK(f.tokens[3] == 0.0);
  CHECK(std::fabs(f.sum[4] - lp[7]) <= tol);

  // Gradient: zero on every row of weight 0 and on the all-masked sequence, logits never read.
  const Eigen::VectorXd d = Eigen::VectorXd::LinSpaced(5, 1.0, 2.0);
  RowMatrix<T> g = RowMatrix<T>::Constant(rows, cols, T(7));
  losskit::sequence_logprobs_backward(z, y, layout, d, g, o);
  for (Eigen::Index r : {0, 1, 5, 6}) CHECK(g.row(r).cwiseAbs().maxCoeff() == T(0));
  CHECK(g.row(4).cwiseAbs().maxCoeff() > T(0));
  // Each counted row's gradient sums to 0 (onehot - softmax), with the mask weight at the target.
  for (Eigen::Index r : {2, 3, 4, 7}) CHECK(std::fabs(double(g.row(r).sum())) <= 1e-5);
  // The weight enters linearly: row 2 (weight 2.5) is 2.5x the gradient with a unit mask there.
  std::vector<float> unit = mask;
  unit[2] = 1.0f;
  SequenceLogprobOptions ou = o;
  ou.loss_mask = unit;
  RowMatrix<T> gu(rows, cols);
  losskit::sequence_logprobs_backward(z, y, layout, d, gu, ou);
  CHECK((g.row(2) - T(2.5) * gu.row(2)).cwiseAbs().maxCoeff() <= T(1e-6));

  SECTION("a zero upstream gradient gives an exact zero row") {
    Eigen::VectorXd d0 = d;
    d0[0] = 0.0;
    losskit::sequence_logprobs_backward(z, y, layout, d0, g, o, f);
    for (Eigen::Index r : {0, 1, 2, 3}) CHECK(g.row(r).cwiseAbs().maxCoeff() == T(0));
  }
  SECTION("without allow_empty_sequences (the default) such sequences are errors, naming them") {
    // A loss on summed log-probs would read their sum 0 as log-prob 0 (probability 1).
    o.allow_empty_sequences = false;
    const auto no_empty = SequenceLayout::offsets({0, 4, 5, 7, 8});  // sequence 2 = rows 5, 6
    const Eigen::VectorXd d4 = d.head(4);
    bool oor = false;
    g.setConstant(T(7));
    auto errors = [&](const SequenceLayout& l, const Eigen::VectorXd& dl, const char* what) {
      CAPTURE(what);
      const std::string fwd = error_of([&] { losskit::sequence_logprobs(z, y, l, o); }, oor);
      CAPTURE(fwd);
      CHECK(has(fwd, "losskit::sequence_logprobs: "));
      CHECK(has(fwd, what));
      CHECK(has(fwd, "'allow_empty_sequences'"));
      CHECK(has(error_of([&] { losskit::sequence_logprobs(z, z, y, l, o); }, oor), what));
      const std::string bwd = error_of([&] { losskit::sequence_logprobs_backward(z, y, l, dl, g, o); }, oor);
      CAPTURE(bwd);
      CHECK(has(bwd, "losskit::sequence_logprobs_backward: "));
      CHECK(has(bwd, what));
      CHECK(!oor);
      CHECK(g.cwiseAbs().minCoeff() == T(7));  // untouched
    };
    errors(layout, d, "sequence 1 has no counted tokens (it has no rows: the layout gives it [4, 4))");
    // Rows 5 (mask 0, ignore_index) and 6 (ignore_index).
    errors(no_empty, d4, "sequence 2 has no counted tokens (all masked or ignore_index: rows [5, 7))");
    // One counted row, however small its weight, is enough.
    std::vector<float> tiny = mask;
    tiny[6] = 1e-30f;
    o.loss_mask = tiny;
    auto y6 = y;
    y6[6] = 3;
    CHECK(losskit::sequence_logprobs(z, y6, no_empty, o).tokens[2] == double(1e-30f));
  }
  SECTION("uint8 and double masks are the same as float") {
    const std::vector<std::uint8_t> m8{1, 0, 1, 1, 1, 0, 1, 1};
    const std::vector<double> md{1, 0, 1, 1, 1, 0, 1, 1};
    SequenceLogprobOptions o8 = o, od = o;
    o8.loss_mask = m8;
    od.loss_mask = md;
    CHECK(losskit::sequence_logprobs(z, y, layout, o8).sum == losskit::sequence_logprobs(z, y, layout, od).sum);
  }
}

TEMPLATE_TEST_CASE("sequence_logprobs: fixed and offsets layouts agree; int32 targets", "[sequence_logprobs]", float,
                   double) {
  using T = TestType;
  const auto z = lktest::random_logits<T>(12, 50, 4u);
  const auto y = targets_for(12, 50, 2u);
  const std::vector<std::int32_t> y32(y.begin(), y.end());
  SequenceLogprobOptions o;
  o.per_token = true;
  const auto fixed = SequenceLayout::fixed(3, 4);
  const auto offs = SequenceLayout::offsets({0, 4, 8, 12});
  CHECK(fixed.sequences() == 3);
  CHECK(fixed.rows() == 12);
  CHECK(fixed.begin(2) == 8);
  CHECK(fixed.end(2) == 12);
  const auto f1 = losskit::sequence_logprobs(z, y, fixed, o);
  const auto f2 = losskit::sequence_logprobs(z, y32, offs, o);
  CHECK(f1.sum == f2.sum);
  CHECK(f1.mean == f2.mean);
  CHECK(f1.tokens == f2.tokens);
  CHECK(f1.token_logp == f2.token_logp);
  for (Eigen::Index b = 0; b < 3; ++b)
    CHECK_THAT(f1.sum[b], Catch::Matchers::WithinRel(f1.token_logp.segment(4 * b, 4).sum(), 1e-14));
  const Eigen::Vector3d d(0.5, -1.0, 2.0);
  RowMatrix<T> g1(12, 50), g2(12, 50);
  losskit::sequence_logprobs_backward(z, y, fixed, d, g1);
  losskit::sequence_logprobs_backward(z, y32, offs, d, g2);
  CHECK(g1 == g2);
  // sequence backward == token backward with d_token[t] = d_sum[b(t)]
  Eigen::VectorXd dt(12);
  for (Eigen::Index r = 0; r < 12; ++r) dt[r] = d[r / 4];
  losskit::token_logprobs_backward(z, y, dt, g2);
  CHECK(g1 == g2);
  // A default layout has no sequences and fits 0 rows.
  const RowMatrix<T> none(0, 5);
  const auto fe = losskit::sequence_logprobs(none, Labels64{}, SequenceLayout{}, o);
  CHECK(fe.sum.size() == 0);
}

TEMPLATE_TEST_CASE("sequence_logprobs: in-place gradients, forward reuse, thread independence", "[sequence_logprobs]",
                   float, double) {
  using T = TestType;
  const Eigen::Index rows = 64, cols = 2053;  // enough work for several threads
  const auto z = lktest::random_logits<T>(rows, cols, 8u);
  const auto a = lktest::random_logits<T>(rows, cols, 9u);
  auto y = targets_for(rows, cols, 3u);
  y[10] = -100;
  const auto layout = SequenceLayout::fixed(8, 8);
  SequenceLogprobOptions o;
  o.per_token = o.entropy = true;
  o.temperature = 1.7;
  const Eigen::VectorXd d = Eigen::VectorXd::LinSpaced(8, -1.0, 1.0);
  const Eigen::VectorXd dt = Eigen::VectorXd::LinSpaced(rows, -0.5, 1.5), dk = Eigen::VectorXd::LinSpaced(rows, 1.0, -1.0);

  const auto f = losskit::sequence_logprobs(z, a, y, layout, o);
  RowMatrix<T> g(rows, cols), gk(rows, cols);
  losskit::sequence_logprobs_backward(z, y, layout, d, g, o, f);
  losskit::token_logprobs_backward(z, a, y, dt, dk, gk, o, f);

  SECTION("grad may be the logits themselves (both backward paths)") {
    for (bool reuse : {false, true}) {
      RowMatrix<T> x = z;
      if (reuse)
        losskit::sequence_logprobs_backward(x, y, layout, d, x, o, f);
      else
        losskit::sequence_logprobs_backward(x, y, layout, d, x, o);
      CHECK((x - g).cwiseAbs().maxCoeff() <= T(1e-7));
      x = z;
      if (reuse)
        losskit::token_logprobs_backward(x, a, y, dt, dk, x, o, f);
      else
        losskit::token_logprobs_backward(x, a, y, dt, dk, x, o);
      CHECK((x - gk).cwiseAbs().maxCoeff() <= T(1e-7));
    }
  }
  SECTION("a forward computed with a different mask falls back where it has no statistics") {
    std::vector<double> m(std::size_t(rows), 1.0);
    for (std::size_t r = 0; r < m.size(); r += 3) m[r] = 0.0;
    SequenceLogprobOptions om = o;
    om.loss_mask = m;
    const auto fm = losskit::sequence_logprobs(z, y, layout, om);  // rows 0, 3, ... not read
    RowMatrix<T> g2(rows, cols);
    losskit::sequence_logprobs_backward(z, y, layout, d, g2, o, fm);
    CHECK((g2 - g).cwiseAbs().maxCoeff() <= T(1e-7));
  }
  SECTION("same bits for 1, 2 and 3 threads") {
    for (int th : {2, 3, 0}) {
      SequenceLogprobOptions ot = o;
      ot.threads = th;
      const auto ft = losskit::sequence_logprobs(z, a, y, layout, ot);
      CHECK(ft.sum == f.sum);
      CHECK(ft.kl_sum == f.kl_sum);
      CHECK(ft.token_entropy == f.token_entropy);
      RowMatrix<T> gt(rows, cols);
      losskit::sequence_logprobs_backward(z, y, layout, d, gt, ot, ft);
      CHECK(gt == g);
      losskit::sequence_logprobs_backward(z, y, layout, d, gt, ot);
      RowMatrix<T> g1(rows, cols);
      losskit::sequence_logprobs_backward(z, y, layout, d, g1, o);
      CHECK(gt == g1);
      losskit::token_logprobs_backward(z, a, y, dt, dk, gt, ot, ft);
      CHECK(gt == gk);
    }
  }
}

// ---- numerics ------------------------------------------------------------------------------------------

TEMPLATE_TEST_CASE("sequence_logprobs: wide rows against long double, float gradient accuracy", "[sequence_logprobs]",
                   float, double) {
  using T = TestType;
  const int cols = GENERATE(4099, 32000);
  const auto z = lktest::random_logits<T>(3, cols, 50u, 6.0);
  const auto a = lktest::random_logits<T>(3, cols, 51u, 6.0);
  const auto y = targets_for(3, cols, 4u);
  SequenceLogprobOptions o;
  o.per_token = o.entropy = true;
  const auto layout = SequenceLayout::fixed(3, 1);
  const auto f = losskit::sequence_logprobs(z, a, y, layout, o);
  for (Eigen::Index r = 0; r < 3; ++r) {
    const RowRef ref = row_reference(z.row(r), a.row(r), y[std::size_t(r)], 1.0);
    CAPTURE(cols, r);
    CHECK(std::fabs(f.token_logp[r] - double(ref.logp)) <= 1e-5 * std::fabs(double(ref.logp)));
    CHECK(std::fabs(f.token_entropy[r] - double(ref.entropy)) <= 1e-5 * std::fabs(double(ref.entropy)));
    CHECK(std::fabs(f.token_kl[r] - double(ref.kl)) <= 1e-5 * std::fabs(double(ref.kl)));
  }
  // float gradient within 1e-6 of the double one (both backward paths)
  const Eigen::Vector3d d(1.0, -2.0, 0.5);
  RowMatrix<T> g(3, cols);
  RowMatrix<double> gd(3, cols);
  const RowMatrix<double> zd = z.template cast<double>();
  losskit::sequence_logprobs_backward(zd, y, layout, d, gd, o);
  losskit::sequence_logprobs_backward(z, y, layout, d, g, o, f);
  CHECK((g.template cast<double>() - gd).cwiseAbs().maxCoeff() <= 1e-6);
  losskit::sequence_logprobs_backward(z, y, layout, d, g, o);
  CHECK((g.template cast<double>() - gd).cwiseAbs().maxCoeff() <= 1e-6);
}

TEMPLATE_TEST_CASE("sequence_logprobs: jumps between chunks, peaked rows, the target entry as pi -> 1",
                   "[sequence_logprobs]", float, double) {
  using T = TestType;
  const Eigen::Index cols = 5000;  // several chunks in float (2048) and double (1024)
  RowMatrix<T> z = lktest::random_logits<T>(6, cols, 60u, 1.0);
  z(0, 3000) = T(90);    // row 0: far above the first chunk's maximum (the chunk is redone)
  z(1, 10) = T(40);      // row 1: first chunk high, the rest far below (they underflow)
  for (Eigen::Index c = 2048; c < cols; ++c) z(1, c) -= T(200);
  z(2, 4999) = T(30);    // row 2: a peak in the tail
  z(3, 7) = T(25);       // row 3: pi(target) -> 1
  // row 4: more than a chunk of -inf, then logits near -1000 (against a shift of 0 they would
  // all flush to 0; the first chunk with a finite logit takes its own maximum)
  z.row(4).array() -= T(1000);
  z.row(4).head(2200).setConstant(-std::numeric_limits<T>::infinity());
  z(5, 3000) = T(25);    // row 5: pi(target) -> 1 with the peak in a later chunk (its exp exact)
  const Labels64 y{3000, 11, 4999, 7, 3000, 3000};
  SequenceLogprobOptions o;
  o.per_token = o.entropy = true;
  const auto layout = SequenceLayout::fixed(6, 1);
  const auto f = losskit::sequence_logprobs(z, y, layout, o);
  for (Eigen::Index r = 0; r < 6; ++r) {
    const RowRef ref = row_reference(z.row(r), z.row(r), y[std::size_t(r)], 1.0);
    CAPTURE(r, f.token_logp[r], double(ref.logp), f.token_entropy[r], double(ref.entropy));
    CHECK(std::fabs(f.token_logp[r] - double(ref.logp)) <= value_tol<T>(double(ref.logp)));
    CHECK(std::fabs(f.token_entropy[r] - double(ref.entropy)) <= value_tol<T>(double(ref.entropy)));
  }
  // With reference logits (the rows in reverse order: their jumps fall on other rows), one loop
  // takes both rows and redoes a chunk only for the input whose maximum jumped: the policy's
  // values are those above and the reference's those of its own call, bit for bit; k_t against
  // long double.
  {
    const RowMatrix<T> a = z.colwise().reverse();
    const auto fa = losskit::sequence_logprobs(a, y, layout, o);
    const auto fr = losskit::sequence_logprobs(z, a, y, layout, o);
    CHECK(fr.token_logp == f.token_logp);
    CHECK(fr.token_entropy == f.token_entropy);
    CHECK(fr.lse == f.lse);
    CHECK(fr.ref_token_logp == fa.token_logp);
    CHECK(fr.ref_lse == fa.lse);
    for (Eigen::Index r = 0; r < 6; ++r) {
      const RowMatrix<T>& zc = z;
      const RowRef ref = row_reference(zc.row(r), a.row(r), y[std::size_t(r)], 1.0);
      CAPTURE(r, fr.token_kl[r], double(ref.kl));
      if (std::isinf(double(ref.kl)))
        CHECK(fr.token_kl[r] == double(ref.kl));
      else
        CHECK(std::fabs(fr.token_kl[r] - double(ref.kl)) <= value_tol<T>(double(ref.kl)));
    }
  }
  // The target entry: (1 - pi_y) in double, so it keeps relative accuracy when pi_y ~ 1.
  const Eigen::VectorXd d = Eigen::VectorXd::Ones(6);
  for (bool reuse : {false, true}) {
    RowMatrix<T> g(6, cols);
    if (reuse)
      losskit::sequence_logprobs_backward(z, y, layout, d, g, o, f);
    else
      losskit::sequence_logprobs_backward(z, y, layout, d, g, o);
    // (float: logp itself carries the float rounding of the row sum, ~6e-8 absolute)
    for (const auto& [row, col] : {std::pair<Eigen::Index, Eigen::Index>{3, 7}, {5, 3000}}) {
      const auto x = lktest::log_softmax(z.row(row), 1.0L);
      const ld want = -std::expm1(x[std::size_t(col)]);  // 1 - pi_y, about 1e-7
      CAPTURE(reuse, row, double(g(row, col)), double(want));
      CHECK(std::fabs(double(g(row, col)) - double(want)) <= (std::is_same_v<T, float> ? 1e-7 : 1e-6 * double(want)));
    }
    for (Eigen::Index r = 0; r < 6; ++r) {
      const auto xr = lktest::log_softmax(z.row(r), 1.0L);
      double worst = 0;
      for (Eigen::Index c = 0; c < cols; ++c) {
        const ld want_c = (c == y[std::size_t(r)] ? 1.0L : 0.0L) - std::exp(xr[std::size_t(c)]);
        worst = std::max(worst, std::fabs(double(g(r, c)) - double(want_c)));
      }
      CAPTURE(r, worst);
      CHECK(worst <= 1e-6);
    }
  }
}

TEMPLATE_TEST_CASE("sequence_logprobs: -inf logits, NaN", "[sequence_logprobs][inf]", float, double) {
  using T = TestType;
  const T ninf = -std::numeric_limits<T>::infinity();
  auto z = lktest::random_logits<T>(4, 40, 70u);
  auto a = lktest::random_logits<T>(4, 40, 71u);
  Labels64 y{1, 2, 3, 4};
  for (int c : {0, 7, 16, 39}) z(0, c) = a(0, c) = ninf;  // masked vocabulary in both
  a(1, 9) = ninf;                                          // ref only: finite KL
  z(2, 3) = ninf;                                          // the target itself
  SequenceLogprobOptions o;
  o.per_token = o.entropy = true;
  const auto layout = SequenceLayout::fixed(4, 1);
  SECTION("masked vocabulary: finite, zero probability and zero gradient") {
    const auto f = losskit::sequence_logprobs(z, a, y, layout, o);
    for (Eigen::Index r : {0, 1}) {
      const RowRef ref = row_reference(z.row(r), a.row(r), y[std::size_t(r)], 1.0);
      CHECK(std::fabs(f.token_logp[r] - double(ref.logp)) <= 1e-5);
      CHECK(std::fabs(f.token_entropy[r] - double(ref.entropy)) <= 1e-5);
      CHECK(std::fabs(f.token_kl[r] - double(ref.kl)) <= 1e-5);
    }
    CHECK(f.token_logp[2] == -std::numeric_limits<double>::infinity());
    CHECK(std::isfinite(f.token_entropy[2]));
    CHECK(f.token_kl[2] == -std::numeric_limits<double>::infinity());  // rho has mass where pi has none
    RowMatrix<T> g(4, 40);
    const Eigen::Vector4d d(1, 1, 1, 1);
    for (bool reuse : {false, true}) {
      if (reuse)
        losskit::sequence_logprobs_backward(z, y, layout, d, g, o, f);
      else
        losskit::sequence_logprobs_backward(z, y, layout, d, g, o);
      CHECK(g.row(0).allFinite());
      CHECK(g(0, 7) == T(0));
      CHECK(g(0, 39) == T(0));
      CHECK(g.row(2).allFinite());
      CHECK(g(2, 3) == T(1));  // 1 - pi = 1 at a -inf target
      const Eigen::Vector4d dk(0, 1, 0, 0);
      losskit::token_logprobs_backward(z, a, y, Eigen::Vector4d::Zero(), dk, g, o, f);
      CHECK(g.row(1).allFinite());
      CHECK(g(1, 9) < T(0));  // (rho - pi) = -pi where the reference has no mass
    }
  }
  SECTION("a row of NaN or only -inf gives NaN for its sequence only") {
    z(1, 5) = std::numeric_limits<T>::quiet_NaN();
    z.row(3).setConstant(ninf);
    const auto f = losskit::sequence_logprobs(z, y, layout, o);
    CHECK(std::isnan(f.sum[1]));
    CHECK(std::isnan(f.sum[3]));
    CHECK(std::isfinite(f.sum[0]));
  }
}

// ---- errors ------------------------------------------------------------------------------------------

TEST_CASE("sequence_logprobs: argument errors name the function, argument and value; outputs untouched",
          "[sequence_logprobs][errors]") {
  const auto z = lktest::random_logits<double>(6, 10, 1u);
  const auto a = lktest::random_logits<double>(6, 10, 2u);
  const Labels64 y{1, 2, 3, -100, 4, 5};
  const auto layout = SequenceLayout::fixed(2, 3);
  const Eigen::Vector2d d(1, 1);
  const Eigen::VectorXd dt = Eigen::VectorXd::Ones(6);
  RowMatrix<double> g = RowMatrix<double>::Constant(6, 10, 7.0);
  SequenceLogprobOptions o;
  bool oor = false;
  auto untouched = [&] { CHECK(g.cwiseAbs().minCoeff() == 7.0); };

  SECTION("targets out of range: std::out_of_range naming the row and value") {
    Labels64 bad = y;
    bad[3] = 0;
    bad[4] = 10;
    auto msg = error_of([&] { losskit::sequence_logprobs_backward(z, bad, layout, d, g, o); }, oor);
    CHECK(oor);
    CAPTURE(msg);
    CHECK(has(msg, "losskit::sequence_logprobs_backward"));
    CHECK(has(msg, "'targets' has 10 at row 4"));
    bad[4] = -1;
    msg = error_of([&] { losskit::sequence_logprobs(z, bad, layout, o); }, oor);
    CHECK(oor);
    CHECK(has(msg, "'targets' has -1 at row 4"));
    o.ignore_index = -1;  // now it is the ignore_index
    CHECK(error_of([&] { losskit::sequence_logprobs(z, bad, layout, o); }, oor) == "no exception");
    untouched();
  }
  SECTION("layouts inconsistent with the rows") {
    auto msg = error_of([&] { losskit::sequence_logprobs(z, y, SequenceLayout::fixed(2, 4), o); }, oor);
    CHECK(!oor);
    CAPTURE(msg);
    CHECK(has(msg, "'layout' is 2 x 4 = 8 rows, but 'logits' has 6 rows"));
    msg = error_of([&] { losskit::sequence_logprobs_backward(z, y, SequenceLayout::offsets({0, 2, 5}), d, g, o); }, oor);
    CHECK(has(msg, "'layout' offsets end at 5, but 'logits' has 6 rows"));
    msg = error_of([] { SequenceLayout::offsets({0, 3, 2, 6}); }, oor);
    CHECK(has(msg, "SequenceLayout::offsets: offsets must be non-decreasing"));
    msg = error_of([] { SequenceLayout::offsets({1, 6}); }, oor);
    CHECK(has(msg, "offsets[0] must be 0, got 1"));
    msg = error_of([] { SequenceLayout::offsets({}); }, oor);
    CHECK(has(msg, "needs at least one offset"));
    msg = error_of([] { SequenceLayout::fixed(-1, 3); }, oor);
    CHECK(has(msg, "SequenceLayout::fixed: batch and seq_len must be >= 0, got -1 x 3"));
    untouched();
  }
  SECTION("lengths and shapes") {
    CHECK(has(error_of([&] { losskit::sequence_logprobs(z, Labels64{1, 2}, layout, o); }, oor),
              "'targets' has 2 entries, expected one per row of 'logits' (6)"));
    const std::vector<double> short_mask{1, 1};
    o.loss_mask = short_mask;
    CHECK(has(error_of([&] { losskit::sequence_logprobs(z, y, layout, o); }, oor), "'loss_mask' has 2 entries"));
    const std::vector<double> neg_mask{1, 1, -1, 1, 1, 1};
    o.loss_mask = neg_mask;
    CHECK(has(error_of([&] { losskit::sequence_logprobs(z, y, layout, o); }, oor),
              "'loss_mask' must be finite and >= 0, got -1 at row 2"));
    o.loss_mask = {};
    CHECK(has(error_of([&] { losskit::sequence_logprobs_backward(z, y, layout, Eigen::Vector3d(1, 1, 1), g, o); }, oor),
              "'d_sum' has 3 entries, expected 2 (one per sequence of 'layout')"));
    RowMatrix<double> g_small(6, 9);
    CHECK(has(error_of([&] { losskit::sequence_logprobs_backward(z, y, layout, d, g_small, o); }, oor),
              "'grad' has shape 6x9, expected 6x10"));
    CHECK(has(error_of([&] { losskit::sequence_logprobs(z, RowMatrix<double>(6, 9), y, layout, o); }, oor),
              "'ref_logits' has shape 6x9"));
    CHECK(has(error_of([&] { losskit::token_logprobs_backward(z, y, Eigen::VectorXd::Ones(5), g, o); }, oor),
              "'d_token' has 5 entries, expected 6"));
    CHECK(has(error_of([&] { losskit::token_logprobs_backward(z, a, y, dt, Eigen::VectorXd::Ones(2), g, o); }, oor),
              "'d_kl' has 2 entries, expected 6"));
    RowMatrix<double> a2 = a;
    CHECK(has(error_of([&] { losskit::token_logprobs_backward(z, a2, y, dt, dt, a2, o); }, oor),
              "'grad' may alias 'logits' but not 'ref_logits'"));
    SequenceLogprobs bad_fwd;
    bad_fwd.lse = Eigen::VectorXd::Zero(3);
    CHECK(has(error_of([&] { losskit::sequence_logprobs_backward(z, y, layout, d, g, o, bad_fwd); }, oor),
              "'forward.lse' has 3 entries, expected 6"));
    const auto fwd = losskit::sequence_logprobs(z, y, layout, o);  // no ref_lse
    CHECK(has(error_of([&] { losskit::token_logprobs_backward(z, a, y, dt, dt, g, o, fwd); }, oor),
              "'forward.ref_lse' has 0 entries, expected 6"));
    SequenceLogprobOptions o2 = o;
    o2.temperature = 2.0;
    CHECK(has(error_of([&] { losskit::sequence_logprobs_backward(z, y, layout, d, g, o2, fwd); }, oor),
              "'forward' was computed at temperature 1, but 'temperature' is 2"));
    RowMatrix<double> empty(6, 0);
    CHECK(has(error_of([&] { losskit::sequence_logprobs(empty, y, layout, o); }, oor), "it needs at least one column"));
    untouched();
  }
  SECTION("temperature and threads") {
    for (double t : {0.0, -1.0, std::numeric_limits<double>::infinity()}) {
      o.temperature = t;
      CHECK(has(error_of([&] { losskit::sequence_logprobs_backward(z, y, layout, d, g, o); }, oor),
                "'temperature' must be positive and finite"));
    }
    o.temperature = 1.0;
    o.threads = -2;
    CHECK(has(error_of([&] { losskit::sequence_logprobs(z, y, layout, o); }, oor), "'threads' must be >= 0"));
    untouched();
  }
}

TEST_CASE("sequence_logprobs_backward: float rows at T = 0.7 with large logits sum to 0 (the forward's scale)",
          "[sequence_logprobs]") {
  // 1/0.7 is not a float: the forward's lse is at float(1/T), and the backward must take pi and
  // the target entry at that same scale (with 1/T in double a row's entries summed to about
  // |z| |1/T - float(1/T)| = 1.5e-6 here instead of 0; found by tests/fuzz).
  const auto z = lktest::random_logits<float>(4, 3000, 77u, 30.0);
  const Labels64 y{5, 2999, 1200, 7};
  SequenceLogprobOptions o;
  o.temperature = 0.7;
  const auto layout = SequenceLayout::fixed(2, 2);
  const auto f = losskit::sequence_logprobs(z, y, layout, o);
  const Eigen::Vector2d d(1.0, -0.5);
  for (bool reuse : {true, false}) {
    RowMatrix<float> g(4, 3000);
    if (reuse)
      losskit::sequence_logprobs_backward(z, y, layout, d, g, o, f);
    else
      losskit::sequence_logprobs_backward(z, y, layout, d, g, o);
    for (Eigen::Index r = 0; r < 4; ++r) {
      const double sum = g.row(r).cast<double>().sum();
      CAPTURE(reuse, r, sum);
      CHECK(std::fabs(sum) <= 3e-7);
    }
  }
}
