// spherical_z_loss, ldr_kl, AdaptiveLDR and ELR against PyTorch float64 (autograd) restatements of
// their reference implementations (tests/reference/classification_refs.txt, made by
// tests/reference/gen_classification_refs.py). The stateful losses run several steps on one
// object; the state after each step is compared as well. Inputs are regenerated from their seeds
// (tests/reference_vectors.hpp).
//
// Tolerances (the library's accuracy contract):
//   double: loss 1e-10 relative (or 1e-12 absolute), gradient 1e-10 absolute, state 1e-12
//   float:  loss 2e-5 relative (or 1e-6 absolute), gradient 1e-6 absolute, state 1e-6
// (state: ALDR lambdas relative to max(lambda, lambda0), ELR targets absolute)

#include "losskit/losskit.hpp"

#include "catch_compat.hpp"
#include "reference_vectors.hpp"

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <type_traits>
#include <vector>

namespace {

using Catch::Matchers::WithinAbs;
using Catch::Matchers::WithinRel;
using losskit_test::detail::TokenLine;

template <class T>
using Mat = losskit::RowMatrix<T>;

struct Step {
  std::uint64_t seed = 0, hash = 0;
  std::vector<std::int64_t> ids;
  double value = 0.0;
  std::vector<double> grad, state;
};

struct Record {
  int id = 0;
  std::string kernel, reduction;
  int rows = 0, cols = 0;
  double scale = 0.0;
  std::map<std::string, double> params;
  std::vector<std::int64_t> labels;
  std::vector<Step> steps;

  double param(const std::string& name) const {
    const auto it = params.find(name);
    if (it == params.end()) FAIL("missing parameter " << name);
    return it->second;
  }
};

std::vector<Record> load_records() {
  auto on_case = [](TokenLine& tok) {
    Record r;
    r.id = tok.integer();
    r.kernel = tok.word();
    r.rows = tok.integer();
    r.cols = tok.integer();
    r.scale = tok.number();
    r.reduction = tok.word();
    return r;
  };
  auto on_field = [](TokenLine& tok, const std::string& key, Record& r) {
    if (key == "param") {
      const std::string name = tok.word();
      r.params[name] = tok.number();
    } else if (key == "labels") {
      for (int i = 0; i < r.rows; ++i) r.labels.push_back(tok.integer());
    } else if (key == "step") {
      Step s;
      if (tok.integer() != int(r.steps.size())) tok.fail("steps out of order");
      s.seed = tok.u64();
      s.hash = tok.u64();
      r.steps.push_back(s);
    } else if (r.steps.empty()) {
      tok.fail("'" + key + "' before 'step'");
    } else if (key == "ids") {
      for (int i = 0; i < r.rows; ++i) r.steps.back().ids.push_back(tok.integer());
    } else if (key == "value") {
      r.steps.back().value = tok.number();
    } else if (key == "grad") {
      r.steps.back().grad = tok.numbers(std::size_t(r.rows) * std::size_t(r.cols));
    } else if (key == "state") {
      const std::size_t n = std::size_t(r.param("num_samples"));
      r.steps.back().state = tok.numbers(r.kernel == "elr" ? n * std::size_t(r.cols) : n);
    } else {
      tok.fail("unknown key '" + key + "'");
    }
  };
  auto on_end = [](TokenLine& tok, const Record& r) {
    if (r.steps.empty()) tok.fail("record without steps");
  };
  return losskit_test::read_records(losskit_test::test_data_path("reference/classification_refs.txt"), on_case,
                                    on_field, on_end);
}

const std::vector<Record>& records() {
  static const std::vector<Record> r = load_records();
  return r;
}

// The accuracy contract (reference_vectors.hpp) and the state tolerance.
template <class T>
struct Tol : losskit_test::ReferenceTolerance<T> {
  static constexpr double state_rel = std::is_same_v<T, float> ? 1e-6 : 1e-12;
};

template <class T>
Mat<T> make_logits(const Record& r, const Step& s) {
  const auto v = losskit_test::reference_logits(s.seed, std::size_t(r.rows), std::size_t(r.cols), r.scale);
  Mat<T> m(r.rows, r.cols);
  for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = T(v[std::size_t(i)]);
  return m;
}

template <class T>
void check_step(const Record& r, const Step& s, const losskit::LossResult& res, const Mat<T>& grad) {
  {
    INFO("loss value");
    CHECK_THAT(res.value, WithinRel(s.value, Tol<T>::value_rel) || WithinAbs(s.value, Tol<T>::value_abs));
  }
  double worst = 0.0;
  std::size_t at = 0;
  for (std::size_t i = 0; i < s.grad.size(); ++i) {
    const double d = std::abs(double(grad.data()[i]) - s.grad[i]);
    if (!(d <= worst)) {
      worst = d;
      at = i;
      if (std::isnan(d)) break;
    }
  }
  INFO("worst gradient entry (" << at / std::size_t(r.cols) << ", " << at % std::size_t(r.cols) << ")");
  CHECK_THAT(double(grad.data()[at]), WithinAbs(s.grad[at], Tol<T>::grad_abs));
}

template <class T>
// Relative to max(|want|, floor): lambda_i relative to lambda0 (near 0 it comes from a
// difference lambda0 (1 - KL / (alpha log K)) of float-accurate numbers), ELR targets absolute.
void check_state(const std::vector<double>& got, const std::vector<double>& want, double floor) {
  REQUIRE(got.size() == want.size());
  double worst = 0.0;
  std::size_t at = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double d = std::abs(got[i] - want[i]) / std::max(floor, std::abs(want[i]));
    if (!(d <= worst)) {
      worst = d;
      at = i;
    }
  }
  INFO("worst state entry " << at << ": " << got[at] << " vs " << want[at]);
  CHECK(worst <= Tol<T>::state_rel);
}

losskit::Reduction reduction_of(const Record& r) {
  return r.reduction == "sum" ? losskit::Reduction::sum : losskit::Reduction::mean;
}

template <class T>
void check_record(const Record& r) {
  Catch::StringMaker<double>::precision = 17;
  INFO("case " << r.id << " " << r.kernel << " " << r.rows << "x" << r.cols);
  Mat<T> grad(r.rows, r.cols);
  if (r.kernel == "spherical_z_loss") {
    losskit::SphericalZLossOptions o;
    o.a = r.param("a");
    o.b = r.param("b");
    o.epsilon = r.param("eps");
    o.reduction = reduction_of(r);
    const auto& s = r.steps.at(0);
    check_step<T>(r, s, losskit::spherical_z_loss(make_logits<T>(r, s), r.labels, grad, o), grad);
  } else if (r.kernel == "ldr_kl") {
    losskit::LdrKlOptions o;
    o.margin = r.param("margin");
    o.lambda = r.param("lambda");
    o.normalize = r.param("normalize") != 0.0;
    o.reduction = reduction_of(r);
    const auto& s = r.steps.at(0);
    check_step<T>(r, s, losskit::ldr_kl(make_logits<T>(r, s), r.labels, grad, o), grad);
  } else if (r.kernel == "aldr_kl") {
    losskit::AdaptiveLDR aldr(std::size_t(r.param("num_samples")), r.param("lambda0"));
    losskit::AdaptiveLdrOptions o;
    o.margin = r.param("margin");
    o.alpha = r.param("alpha");
    o.softplus = r.param("softplus") != 0.0;
    for (std::size_t k = 0; k < r.steps.size(); ++k) {
      INFO("step " << k);
      const auto& s = r.steps[k];
      check_step<T>(r, s, aldr.loss(make_logits<T>(r, s), r.labels, s.ids, grad, o), grad);
      check_state<T>(aldr.state(), s.state, r.param("lambda0"));
    }
  } else {
    REQUIRE(r.kernel == "elr");
    losskit::ELR<T> elr(std::size_t(r.param("num_samples")), std::size_t(r.cols));
    losskit::ElrOptions o;
    o.beta = r.param("beta");
    o.lambda = r.param("lambda");
    for (std::size_t k = 0; k < r.steps.size(); ++k) {
      INFO("step " << k);
      const auto& s = r.steps[k];
      check_step<T>(r, s, elr.loss(make_logits<T>(r, s), r.labels, s.ids, grad, o), grad);
      const auto& t = elr.state();
      check_state<T>(std::vector<double>(t.data(), t.data() + t.size()), s.state, 1.0);
    }
  }
}

}  // namespace

TEST_CASE("classification reference file: every kernel present, inputs regenerate exactly", "[reference]") {
  std::map<std::string, int> seen;
  for (const auto& r : records()) {
    ++seen[r.kernel];
    for (const auto& s : r.steps)
      CHECK(losskit_test::float_bits_hash(losskit_test::reference_logits(s.seed, std::size_t(r.rows),
                                                                         std::size_t(r.cols), r.scale)) == s.hash);
  }
  CHECK(seen.size() == 4);
  CHECK(seen.count("spherical_z_loss") == 1);
  CHECK(seen.count("ldr_kl") == 1);
  CHECK(seen.count("aldr_kl") == 1);
  CHECK(seen.count("elr") == 1);
}

TEMPLATE_TEST_CASE("classification losses match the PyTorch float64 reference", "[reference]", float, double) {
  for (const auto& r : records()) check_record<TestType>(r);
}
