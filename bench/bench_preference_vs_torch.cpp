// Sigmoid DPO, forward + backward into the policy logits, float, in one binary:
//   chosen and rejected batches of 8 x 512 tokens (sequences 0..7 chosen, 8..15 rejected, 8192
//   rows) over a 32000 vocabulary, policy and reference logits, beta = 0.1, mean over the 8
//   pairs; the reference log-probs are forward only.
//
//   floor    one streaming read of the policy and reference logits and one write of the gradient
//   floor_dpo  the traffic of the computation itself: the policy read twice (forward, then
//            backward), the reference once, the gradient written once (3 reads + 1 write)
//   losskit  sequence_logprobs(policy) + sequence_logprobs(ref) + the DPO scalar (inline below) +
//            sequence_logprobs_backward reusing the forward's per-row lse (one streaming pass)
//   variants dpo_recompute: the backward recomputes the row statistics (no forward result);
//            dpo_inplace: the gradient overwrites the policy logits;
//            dpo_onecall: policy and reference log-probs from one call (one pass over both, which
//            also computes the full-vocabulary KL term);
//            dpo_step: losskit::dpo_step, the whole step in one call, each pair's backward written
//            while the next pair is read (preference/sequence_pair_step.hpp); dpo_step_inplace:
//            the same with the gradient over the policy logits;
//   eigen    log_softmax matrices with Eigen array expressions, gather, DPO, gradient
//   torch    log_softmax + gather + DPO + autograd backward (libtorch, when built with it)
// Shape 8192 x 32000, threads 1 and 2. bench/report.py turns the JSON output into ratios:
//
//   build/release/bench/bench_preference_vs_torch --benchmark_format=json > out.json
//   python3 bench/report.py out.json

#include "bench_support.hpp"

#include <losskit/core/scalar_math.hpp>
#include <losskit/preference/dpo_step.hpp>
#include <losskit/preference/sequence_logprobs.hpp>

#include <cmath>
#include <cstdint>
#include <array>
#include <vector>

namespace {

using losskit::RowMatrixXf;
constexpr std::int64_t kPairs = 8, kLen = 512, kSeqs = 2 * kPairs, kRows = kSeqs * kLen, kVocab = 32000;
constexpr double kBeta = 0.1;

struct Inputs {
  RowMatrixXf policy, ref, grad;
  std::vector<std::int64_t> targets;
};

// Uniform in [-4, 4) from a counter-based splitmix64 (fast to build 2 x 262M values).
float uniform(std::uint64_t seed, std::uint64_t i) {
  std::uint64_t z = seed + (i + 1) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return float(double(z >> 40) * 0x1.0p-24 * 8.0 - 4.0);
}

Inputs& inputs() {
  static Inputs in = [] {
    Inputs x{RowMatrixXf(kRows, kVocab), RowMatrixXf(kRows, kVocab), RowMatrixXf(kRows, kVocab), {}};
    for (Eigen::Index i = 0; i < x.policy.size(); ++i) {
      x.policy.data()[i] = uniform(1, std::uint64_t(i));
      x.ref.data()[i] = x.policy.data()[i] + 0.25f * uniform(2, std::uint64_t(i));
    }
    x.grad.setZero();
    x.targets.resize(std::size_t(kRows));
    for (std::int64_t r = 0; r < kRows; ++r) x.targets[std::size_t(r)] = std::int64_t(uniform(3, std::uint64_t(r)) * 1e4 + 4e4) % kVocab;
    return x;
  }();
  return in;
}

void set_counters(benchmark::State& st, double loss) {
  st.counters["loss"] = loss;
  losskit_bench::set_counters(st, kRows, kVocab, 3);  // 2 reads + 1 write per element
}

// The DPO scalar: h_i = beta ((pi_w - rho_w) - (pi_l - rho_l)), loss = mean_i -log sigma(h_i),
// d/dpi_w = -beta sigma(-h) / P, d/dpi_l = +beta sigma(-h) / P.
double sigmoid_dpo(const Eigen::VectorXd& pi, const Eigen::VectorXd& rho, Eigen::VectorXd& d_sum) {
  double loss = 0.0;
  d_sum.resize(kSeqs);
  for (std::int64_t i = 0; i < kPairs; ++i) {
    const double h = kBeta * ((pi[i] - rho[i]) - (pi[kPairs + i] - rho[kPairs + i]));
    loss += losskit::detail::softplus(-h) / double(kPairs);
    d_sum[i] = -kBeta * losskit::detail::sigmoid(-h) / double(kPairs);
    d_sum[kPairs + i] = -d_sum[i];
  }
  return loss;
}

// ---- the floor: g = policy + ref, one streaming pass (bench_support.hpp) ------------------------
void BM_floor(benchmark::State& st) {
  auto& in = inputs();
  losskit_bench::time_floor(st, in.policy, in.ref, in.grad);
  st.counters["loss"] = 0.0;
}

// ---- the traffic DPO itself must move: 3 reads + 1 write ------------------------------------------
// The policy logits are read twice (the forward, then the backward once the pair's coefficient is
// known), the reference once, the gradient written once. This loop moves exactly that, with the
// backward of a row trailing its forward by one sequence (kLen rows) and both in one loop where
// they overlap (the most concurrent streams, as a fused kernel would have): out[r - kLen] =
// policy[r - kLen] + policy[r] + ref[r]. No arithmetic beyond the adds.
void BM_floor_dpo(benchmark::State& st) {
  namespace d = losskit::detail;
  using losskit::simd::load;
  auto& in = inputs();
  const std::size_t n = std::size_t(kVocab);
  double sink = 0.0;
  for (auto _ : st) {
    std::vector<double> part(2, 0.0);
    d::parallel_ranges(kRows, int(st.range(2)), [&](int tid, std::ptrdiff_t b, std::ptrdiff_t e) {
      for (std::ptrdiff_t r = b; r < e + kLen; ++r) {
        const float* pf = r < e ? in.policy.row(r).data() : nullptr;  // forward reads
        const float* rf = r < e ? in.ref.row(r).data() : nullptr;
        const bool back = r - kLen >= b;
        if (back) {
          const float* pb = in.policy.row(r - kLen).data();
          float* out = in.grad.row(r - kLen).data();
          d::store_row<float>(out, 0, n, true, [&](auto tag, std::size_t i) {
            using V = typename decltype(tag)::type;
            const V v = load<V>(pb + i);
            return pf ? v + load<V>(pf + i) + load<V>(rf + i) : v;
          });
        } else {
          part[std::size_t(tid)] += losskit::simd::sum_lanes<float, 1>(0, n, [&](auto tag, std::size_t i) {
            using V = typename decltype(tag)::type;
            return std::array<V, 1>{load<V>(pf + i) + load<V>(rf + i)};
          })[0];
        }
      }
      losskit::simd::stream_fence();
    });
    sink += part[0] + part[1];
    benchmark::DoNotOptimize(sink);
    benchmark::ClobberMemory();
  }
  losskit_bench::set_counters(st, kRows, kVocab, 4);
}

// ---- losskit -------------------------------------------------------------------------------------
enum class Variant { reuse_lse, recompute, inplace, one_call, step, step_inplace };

void BM_losskit(benchmark::State& st, Variant v) {
  auto& in = inputs();
  const auto layout = losskit::SequenceLayout::fixed(kSeqs, kLen);
  losskit::SequenceLogprobOptions o;
  o.threads = int(st.range(2));
  const bool inplace = v == Variant::inplace || v == Variant::step_inplace;
  const RowMatrixXf& policy = inplace ? in.grad : in.policy;
  Eigen::VectorXd d_sum;
  double loss = 0.0;
  for (auto _ : st) {
    if (inplace) {  // the "policy logits" this variant overwrites, fresh each time
      st.PauseTiming();
      in.grad = in.policy;
      st.ResumeTiming();
    }
    if (v == Variant::step || v == Variant::step_inplace) {  // one call, pairs pipelined
      losskit::DpoOptions d;
      d.beta = kBeta;
      loss = losskit::dpo_step(policy, in.ref, in.targets, layout, in.grad, d, o).loss.value;
      benchmark::ClobberMemory();
      continue;
    }
    losskit::SequenceLogprobs pi;
    if (v == Variant::one_call) {  // policy and reference in one pass (also gives the KL term)
      pi = losskit::sequence_logprobs(policy, in.ref, in.targets, layout, o);
      loss = sigmoid_dpo(pi.sum, pi.ref_sum, d_sum);
    } else {
      pi = losskit::sequence_logprobs(policy, in.targets, layout, o);
      const auto rho = losskit::sequence_logprobs(in.ref, in.targets, layout, o);
      loss = sigmoid_dpo(pi.sum, rho.sum, d_sum);
    }
    if (v == Variant::recompute)
      losskit::sequence_logprobs_backward(policy, in.targets, layout, d_sum, in.grad, o);
    else
      losskit::sequence_logprobs_backward(policy, in.targets, layout, d_sum, in.grad, o, pi);
    benchmark::DoNotOptimize(d_sum.data());
    benchmark::ClobberMemory();
  }
  set_counters(st, loss);
}

// ---- naive Eigen ---------------------------------------------------------------------------------
using ArrayXXr = Eigen::Array<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
ArrayXXr log_softmax(const RowMatrixXf& v) {
  ArrayXXr a = v.array();
  const Eigen::ArrayXf m = a.rowwise().maxCoeff();
  a.colwise() -= m;
  const Eigen::ArrayXf lse = a.exp().rowwise().sum().log();
  a.colwise() -= lse;
  return a;
}
Eigen::VectorXd sequence_sums(const ArrayXXr& lp, const std::vector<std::int64_t>& y) {
  Eigen::VectorXd s = Eigen::VectorXd::Zero(kSeqs);
  for (std::int64_t r = 0; r < kRows; ++r) s[r / kLen] += double(lp(r, y[std::size_t(r)]));
  return s;
}

void BM_eigen(benchmark::State& st) {
  auto& in = inputs();
  Eigen::VectorXd d_sum;
  double loss = 0.0;
  for (auto _ : st) {
    const ArrayXXr lp = log_softmax(in.policy);
    const Eigen::VectorXd pi = sequence_sums(lp, in.targets);
    const Eigen::VectorXd rho = sequence_sums(log_softmax(in.ref), in.targets);
    loss = sigmoid_dpo(pi, rho, d_sum);
    Eigen::ArrayXf scale(kRows);
    for (std::int64_t r = 0; r < kRows; ++r) scale[r] = float(d_sum[r / kLen]);
    in.grad.array() = -(lp.exp().colwise() * scale);
    for (std::int64_t r = 0; r < kRows; ++r) in.grad(r, in.targets[std::size_t(r)]) += scale[r];
    benchmark::DoNotOptimize(d_sum.data());
    benchmark::ClobberMemory();
  }
  set_counters(st, loss);
}

// ---- libtorch ------------------------------------------------------------------------------------
#if LOSSKIT_HAVE_TORCH
// As TRL's DPOTrainer: log_softmax, gather at the labels, masked sum per sequence; the reference
// under no_grad; -logsigmoid(h).mean(); backward.
void BM_torch(benchmark::State& st) {
  auto& in = inputs();
  const auto f32 = torch::TensorOptions().dtype(torch::kFloat32);
  const auto policy = torch::from_blob(in.policy.data(), {kRows, kVocab}, f32).requires_grad_(true);
  const auto ref = torch::from_blob(in.ref.data(), {kRows, kVocab}, f32);
  const auto labels = torch::from_blob(in.targets.data(), {kRows, 1}, torch::TensorOptions().dtype(torch::kInt64));
  const auto mask = torch::ones({kSeqs, kLen}, f32);
  auto seq_logps = [&](const torch::Tensor& logits) {
    return (torch::log_softmax(logits, -1).gather(-1, labels).view({kSeqs, kLen}) * mask).sum(-1);
  };
  const double loss = losskit_bench::time_torch_backward(st, policy, [&] {
    const auto pi = seq_logps(policy);
    torch::Tensor rho;
    {
      torch::NoGradGuard no_grad;
      rho = seq_logps(ref);
    }
    const auto h = kBeta * ((pi.slice(0, 0, kPairs) - rho.slice(0, 0, kPairs)) -
                            (pi.slice(0, kPairs, kSeqs) - rho.slice(0, kPairs, kSeqs)));
    return -torch::log_sigmoid(h).mean();
  });
  set_counters(st, loss);
}
#endif

// The arguments rows / cols name the one shape (bench/report.py reads them); only threads varies.
const std::vector<losskit_bench::Shape> kShape{{kRows, kVocab}};

const int registered = [] {
  using losskit_bench::register_grid;
  register_grid("floor", kShape, {1, 2}, BM_floor);
  register_grid("floor_dpo", kShape, {1, 2}, BM_floor_dpo);
  register_grid("dpo/losskit", kShape, {1, 2}, BM_losskit, Variant::reuse_lse);
  register_grid("dpo_recompute/losskit", kShape, {1, 2}, BM_losskit, Variant::recompute);
  register_grid("dpo_inplace/losskit", kShape, {1, 2}, BM_losskit, Variant::inplace);
  register_grid("dpo_onecall/losskit", kShape, {1, 2}, BM_losskit, Variant::one_call);
  register_grid("dpo_step/losskit", kShape, {1, 2}, BM_losskit, Variant::step);
  register_grid("dpo_step_inplace/losskit", kShape, {1, 2}, BM_losskit, Variant::step_inplace);
  register_grid("dpo/eigen", kShape, {1}, BM_eigen);
#if LOSSKIT_HAVE_TORCH
  register_grid("dpo/torch", kShape, {1, 2}, BM_torch);
#endif
  return 0;
}();

}  // namespace
