#pragma once
// Shared helpers of the preference-loss tests: the input generators of
// tests/reference/gen_preference_refs.py (on the shared splitmix64 stream of reference_vectors.hpp),
// a reader for tests/reference/preference_refs.txt, comparisons, and a central finite-difference
// check for functions of a few vectors.

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <Eigen/Core>

#include "catch_compat.hpp"
#include "reference_vectors.hpp"

namespace preftest {

using Eigen::VectorXd;

// ---- generators (mirror gen_preference_refs.py) ------------------------------------------------

inline double u(std::uint64_t seed, std::size_t i) { return losskit_test::uniform01(seed, i); }

// n_i = 1 + floor(maxlen u_i)
inline VectorXd lengths(std::uint64_t seed, Eigen::Index n, double maxlen) {
  VectorXd v(n);
  for (Eigen::Index i = 0; i < n; ++i) v[i] = 1.0 + std::floor(maxlen * u(seed, std::size_t(i)));
  return v;
}
// x_i = float(n_i (lo + (hi - lo) u_i))
inline VectorXd seq(std::uint64_t seed, const VectorXd& lens, double lo, double hi) {
  VectorXd v(lens.size());
  for (Eigen::Index i = 0; i < v.size(); ++i) v[i] = double(float(lens[i] * (lo + (hi - lo) * u(seed, std::size_t(i)))));
  return v;
}
// y_i = float(base_i + scale (2 u_i - 1))
inline VectorXd near(std::uint64_t seed, const VectorXd& base, double scale) {
  VectorXd v(base.size());
  for (Eigen::Index i = 0; i < v.size(); ++i)
    v[i] = double(float(base[i] + scale * (2.0 * u(seed, std::size_t(i)) - 1.0)));
  return v;
}

// ---- reference records ---------------------------------------------------------------------------

struct Record {
  int id = 0;
  std::string fn;
  std::map<std::string, std::string> head, opt;
  std::map<std::string, std::vector<double>> out;

  std::string describe() const {
    std::ostringstream os;
    os << "case " << id << ' ' << fn;
    for (const auto& [k, v] : head) os << ' ' << k << '=' << v;
    os << " |";
    for (const auto& [k, v] : opt) os << ' ' << k << '=' << v;
    return os.str();
  }
  double num(const std::string& k, double def = 0.0) const {
    const auto it = head.find(k);
    return it == head.end() ? def : std::strtod(it->second.c_str(), nullptr);
  }
  bool has(const std::string& k) const { return opt.count(k) != 0; }
  double opt_num(const std::string& k, double def) const {
    const auto it = opt.find(k);
    return it == opt.end() ? def : std::strtod(it->second.c_str(), nullptr);
  }
  std::vector<std::string> opt_list(const std::string& k) const {
    std::vector<std::string> items;
    const auto it = opt.find(k);
    if (it == opt.end()) return items;
    std::stringstream ss(it->second);
    std::string item;
    while (std::getline(ss, item, ',')) items.push_back(item);
    return items;
  }
  VectorXd vec(const std::string& k) const {
    const auto it = out.find(k);
    if (it == out.end()) throw std::runtime_error(describe() + ": no field '" + k + "'");
    return Eigen::Map<const VectorXd>(it->second.data(), Eigen::Index(it->second.size()));
  }
  double scalar(const std::string& k) const { return vec(k)[0]; }
  bool has_out(const std::string& k) const { return out.count(k) != 0; }
};

inline std::vector<Record> load_records(const std::string& path) {
  std::ifstream file(path);
  if (!file) throw std::runtime_error("cannot open reference file '" + path + "'");
  std::vector<Record> records;
  std::string line;
  bool open = false;
  long declared = -1;
  while (std::getline(file, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream in(line);
    std::string key;
    in >> key;
    auto key_values = [&](std::map<std::string, std::string>& m) {
      std::string kv;
      while (in >> kv) {
        const auto eq = kv.find('=');
        if (eq == std::string::npos) throw std::runtime_error(path + ": bad key=value '" + kv + "'");
        m[kv.substr(0, eq)] = kv.substr(eq + 1);
      }
    };
    if (key == "cases") {
      in >> declared;
    } else if (key == "case") {
      if (open) throw std::runtime_error(path + ": 'case' before 'end'");
      open = true;
      Record r;
      in >> r.id >> r.fn;
      key_values(r.head);
      records.push_back(std::move(r));
    } else if (key == "opt") {
      key_values(records.back().opt);
    } else if (key == "end") {
      if (!open) throw std::runtime_error(path + ": 'end' without 'case'");
      open = false;
    } else {
      if (!open) throw std::runtime_error(path + ": '" + key + "' outside a record");
      std::vector<double>& v = records.back().out[key];
      std::string w;
      while (in >> w) v.push_back(std::strtod(w.c_str(), nullptr));
    }
  }
  if (open) throw std::runtime_error(path + ": missing 'end'");
  if (declared != long(records.size())) throw std::runtime_error(path + ": record count mismatch");
  return records;
}

inline const std::vector<Record>& records() {
  static const std::vector<Record> all = load_records(losskit_test::test_data_path("reference/preference_refs.txt"));
  return all;
}

inline std::vector<Record> records_of(const std::string& fn) {
  std::vector<Record> out;
  for (const Record& r : records())
    if (r.fn == fn) out.push_back(r);
  return out;
}

// Paired inputs of a record (gen_preference_refs.py paired_inputs / unpaired_inputs).
struct Inputs {
  VectorXd lc, lr, pc, pr, rc, rr, kp, kr;
};
inline Inputs inputs_of(const Record& r) {
  const auto s = std::uint64_t(r.num("seed"));
  const auto n = Eigen::Index(r.num("n")), m = r.fn == "kto" || r.fn == "bco" ? Eigen::Index(r.num("m")) : n;
  const double maxlen = r.num("maxlen"), lo = r.num("lo"), hi = r.num("hi"), scale = r.num("scale");
  Inputs x;
  x.lc = lengths(s, n, maxlen);
  x.lr = lengths(s + 1, m, maxlen);
  x.pc = seq(s + 2, x.lc, lo, hi);
  x.pr = seq(s + 3, x.lr, lo, hi);
  x.rc = near(s + 4, x.pc, scale);
  x.rr = near(s + 5, x.pr, scale);
  const VectorXd kl_len = lengths(s + 8, n + m, maxlen);
  x.kp = seq(s + 6, kl_len, lo, hi);
  x.kr = near(s + 7, x.kp, scale * r.num("kl_scale", 1.0));
  return x;
}

// ---- comparisons ---------------------------------------------------------------------------------

// |a - b| <= tol max(1, |b|) elementwise; reports the worst entry.
inline void check_close(const VectorXd& got, const VectorXd& want, double tol, const std::string& what) {
  INFO(what);
  REQUIRE(got.size() == want.size());
  double worst = 0.0;
  Eigen::Index at = 0;
  for (Eigen::Index i = 0; i < got.size(); ++i) {
    const double err = std::fabs(got[i] - want[i]) / std::max(1.0, std::fabs(want[i]));
    if (std::isnan(err) ? !std::isnan(worst) : err > worst) {
      worst = err;
      at = i;
    }
  }
  const double got_at = got.size() ? got[at] : 0.0, want_at = want.size() ? want[at] : 0.0;
  CAPTURE(at, worst, got_at, want_at);
  CHECK(worst <= tol);
}
inline void check_close(double got, double want, double tol, const std::string& what) {
  check_close(VectorXd::Constant(1, got), VectorXd::Constant(1, want), tol, what);
}

// The outputs every record of a per-sequence loss carries (value, per_row, gradients, rewards).
template <class Result>
inline void check_outputs(const Result& res, const Record& r, double tol_value, double tol_grad) {
  check_close(res.value, r.scalar("value"), tol_value, "value");
  check_close(res.per_row, r.vec("per_row"), tol_value, "per_row");
  check_close(res.d_policy_chosen, r.vec("d_chosen"), tol_grad, "d_chosen");
  check_close(res.d_policy_rejected, r.vec("d_rejected"), tol_grad, "d_rejected");
  check_close(res.chosen_rewards, r.vec("chosen_rewards"), 1e-13, "chosen_rewards");
  check_close(res.rejected_rewards, r.vec("rejected_rewards"), 1e-13, "rejected_rewards");
}

// ... and of a paired loss: also accuracy and, where the loss has one, the NLL term.
template <class Result>
inline void check_paired_outputs(const Result& res, const Record& r, double tol_value, double tol_grad) {
  check_outputs(res, r, tol_value, tol_grad);
  CHECK(res.accuracy == r.scalar("accuracy"));
  if (r.has_out("nll")) check_close(res.nll, r.scalar("nll"), 1e-13, "nll");
}

// ---- finite differences --------------------------------------------------------------------------

// f(inputs) -> value; `grads[k]` is the analytic gradient w.r.t. inputs[k]. Central differences with
// h = step max(1, |x|); requires |analytic - numeric| <= tol max(1e-3, |numeric|) per component.
inline void check_fd(const std::function<double(const std::vector<VectorXd>&)>& f, std::vector<VectorXd> inputs,
                     const std::vector<VectorXd>& grads, double tol = 1e-6, double step = 1e-6) {
  double worst = 0.0;
  int wk = -1;
  Eigen::Index wi = -1;
  double wa = 0.0, wn = 0.0;
  for (std::size_t k = 0; k < inputs.size(); ++k) {
    REQUIRE(grads[k].size() == inputs[k].size());
    for (Eigen::Index i = 0; i < inputs[k].size(); ++i) {
      const double x = inputs[k][i], h = step * std::max(1.0, std::fabs(x));
      inputs[k][i] = x + h;
      const double fp = f(inputs);
      inputs[k][i] = x - h;
      const double fm = f(inputs);
      inputs[k][i] = x;
      const double num = (fp - fm) / (2.0 * h);
      const double err = std::fabs(grads[k][i] - num) / std::max(1e-3, std::fabs(num));
      if (std::isnan(err) ? !std::isnan(worst) : err > worst) {
        worst = err;
        wk = int(k);
        wi = i;
        wa = grads[k][i];
        wn = num;
      }
    }
  }
  CAPTURE(wk, wi, wa, wn, worst);
  CHECK(worst <= tol);
}

// Expects std::invalid_argument whose message contains every fragment.
template <class Fn>
inline void check_throws(Fn&& fn, std::vector<std::string> fragments) {
  bool thrown = false;
  try {
    fn();
  } catch (const std::invalid_argument& e) {
    thrown = true;
    const std::string msg = e.what();
    CAPTURE(msg);
    for (const auto& f : fragments) {
      CAPTURE(f);
      CHECK(msg.find(f) != std::string::npos);
    }
  }
  CHECK(thrown);
}

}  // namespace preftest
