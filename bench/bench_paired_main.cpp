// Paired ratios to the memory floor, for a VM whose bandwidth drifts while a benchmark runs.
//
// Google Benchmark's interleaved repetitions take the minimum of each benchmark over the whole
// run; when a neighbour takes memory bandwidth for a while (this VM's floor moves between about
// 7 and 10 ms for two 1024 x 32000 inputs within minutes), the floor and a kernel can get their
// minima from different states of the machine. Here each repetition times the floor and then
// the kernel back to back, and the reported ratio is the median of those paired ratios; the
// spread (the quartiles) is printed beside it.
//
//   bench_paired_main [rows] [cols] [threads] [repetitions] [kernel...]
//   defaults: 1024 32000 1 15, every kernel. Kernels: kl_div reverse_kl_div jsd skew_kl_div
//   skew_reverse_kl_div tvd cauchy_schwarz_div kd_loss topk_kl_div cross_entropy soft_cross_entropy
//   dpo dpo_step spherical_z_loss ldr_kl ldr_kl_raw aldr_kl.
// Divergences at temperature 2 (beta 0.5, skew 0.1), kd_loss at T 2 with alpha 0.5,
// topk_kl_div with k = 1000, cross_entropy with smoothing 0.1 and z-loss 1e-4 (its floor: one
// read + one write; the others: two reads + one write), soft_cross_entropy with smoothing 0.1.
// dpo / dpo_step: sigmoid DPO (beta 0.1) over 8 pairs, the rows split into 16 sequences of
// rows / 16 tokens (8192 rows: the 8 x 512 chosen and rejected tokens), the first input
// as the policy logits and the second as the reference's: dpo is sequence_logprobs (policy,
// then reference) + dpo + sequence_logprobs_backward reusing the forward, dpo_step the fused
// call (preference/dpo_step.hpp). Skipped when rows is not a multiple of 16.
// The classification kernels of bench_classification (one read + one write floor): spherical
// Z-loss (a = 1, b = 0), ldr_kl with its default softplus normalisation and in the raw form,
// AdaptiveLDR (L1 normalisation, one lambda step per row and visit; sample ids = rows).

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include <losskit/losskit.hpp>

#include "bench_support.hpp"

namespace {

using losskit::RowMatrixXf;
using Clock = std::chrono::steady_clock;

template <class F>
double time_ms(F&& f) {
  const auto t0 = Clock::now();
  f();
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

double quantile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  const double at = q * double(v.size() - 1);
  const std::size_t lo = std::size_t(at);
  const std::size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (at - double(lo)) * (v[hi] - v[lo]);
}

struct Kernel {
  const char* name;
  bool one_input;  // floor of one read + one write (cross_entropy)
  std::function<double()> run;
};

}  // namespace

int main(int argc, char** argv) {
  const Eigen::Index rows = argc > 1 ? std::atol(argv[1]) : 1024;
  const Eigen::Index cols = argc > 2 ? std::atol(argv[2]) : 32000;
  const int threads = argc > 3 ? std::atoi(argv[3]) : 1;
  const int reps = argc > 4 ? std::max(1, std::atoi(argv[4])) : 15;
  std::vector<std::string> want(argv + std::min(argc, 5), argv + argc);

  RowMatrixXf s(rows, cols), t(rows, cols), g(rows, cols);
  std::mt19937 rng(7);
  losskit_bench::fill_normal(rng, {&s, &t});
  g.setZero();
  std::vector<std::int64_t> labels(static_cast<std::size_t>(rows));
  for (Eigen::Index r = 0; r < rows; ++r) labels[std::size_t(r)] = (r * 997) % cols;

  losskit::DivergenceOptions dv;
  dv.temperature = 2.0;
  dv.threads = threads;
  losskit::KdLossOptions kd;
  kd.temperature = 2.0;
  kd.threads = threads;
  losskit::TopkKlOptions tk;
  tk.k = 1000;
  tk.threads = threads;
  losskit::CrossEntropyOptions ce;
  ce.label_smoothing = 0.1;
  ce.z_loss = 1e-4;
  ce.threads = threads;
  losskit::SoftCrossEntropyOptions sce;  // the teacher matrix as the targets (the time does not depend on them)
  sce.label_smoothing = 0.1;
  sce.threads = threads;

  const std::int64_t seqs = 16, pairs = seqs / 2;
  const bool dpo_shape = rows % seqs == 0;
  const auto layout = losskit::SequenceLayout::fixed(seqs, dpo_shape ? std::int64_t(rows) / seqs : 0);
  losskit::SequenceLogprobOptions so;
  so.threads = threads;
  const losskit::DpoOptions dpo_options;  // sigmoid, beta 0.1, mean over pairs
  auto dpo_unfused = [&] {
    const auto pi = losskit::sequence_logprobs(s, labels, layout, so);
    const auto rho = losskit::sequence_logprobs(t, labels, layout, so);
    const auto r = losskit::dpo(pi.sum.head(pairs), pi.sum.tail(pairs), rho.sum.head(pairs), rho.sum.tail(pairs), dpo_options);
    Eigen::VectorXd up(seqs);
    up << r.d_policy_chosen, r.d_policy_rejected;
    losskit::sequence_logprobs_backward(s, labels, layout, up, g, so, pi);
    return r.value;
  };

  std::vector<Kernel> kernels{
      {"kl_div", false, [&] { return losskit::kl_div(s, t, g, dv).value; }},
      {"reverse_kl_div", false, [&] { return losskit::reverse_kl_div(s, t, g, dv).value; }},
      {"jsd", false, [&] { return losskit::jsd(s, t, g, dv).value; }},
      {"skew_kl_div", false, [&] { return losskit::skew_kl_div(s, t, g, dv).value; }},
      {"skew_reverse_kl_div", false, [&] { return losskit::skew_reverse_kl_div(s, t, g, dv).value; }},
      {"tvd", false, [&] { return losskit::tvd(s, t, g, dv).value; }},
      {"cauchy_schwarz_div", false, [&] { return losskit::cauchy_schwarz_div(s, t, g, dv).value; }},
      {"kd_loss", false, [&] { return losskit::kd_loss(s, t, labels, g, kd).value; }},
      {"topk_kl_div", false, [&] { return losskit::topk_kl_div(s, t, g, tk).value; }},
      {"cross_entropy", true, [&] { return losskit::cross_entropy(s, labels, g, ce).value; }},
      {"soft_cross_entropy", false, [&] { return losskit::soft_cross_entropy(s, t, g, sce).value; }},
  };
  losskit::SphericalZLossOptions sz;
  sz.threads = threads;
  losskit::LdrKlOptions ldr, ldr_raw;
  ldr.threads = ldr_raw.threads = threads;
  ldr_raw.normalize = false;
  losskit::AdaptiveLDR aldr(std::size_t(rows), 1.0);
  losskit::AdaptiveLdrOptions ao;
  ao.threads = threads;
  std::vector<std::int64_t> ids(static_cast<std::size_t>(rows));
  for (Eigen::Index r = 0; r < rows; ++r) ids[std::size_t(r)] = r;
  kernels.push_back({"spherical_z_loss", true, [&] { return losskit::spherical_z_loss(s, labels, g, sz).value; }});
  kernels.push_back({"ldr_kl", true, [&] { return losskit::ldr_kl(s, labels, g, ldr).value; }});
  kernels.push_back({"ldr_kl_raw", true, [&] { return losskit::ldr_kl(s, labels, g, ldr_raw).value; }});
  kernels.push_back({"aldr_kl", true, [&] { return aldr.loss(s, labels, ids, g, ao).value; }});
  if (dpo_shape) {
    kernels.push_back({"dpo", false, dpo_unfused});
    kernels.push_back({"dpo_step", false, [&] { return losskit::dpo_step(s, t, labels, layout, g, dpo_options, so).loss.value; }});
  }

  std::printf("rows %ld, cols %ld, threads %d, %d paired repetitions (floor, then kernel)\n", long(rows), long(cols),
              threads, reps);
  std::printf("%-20s %10s %10s %8s %17s\n", "kernel", "kernel ms", "floor ms", "ratio", "ratio quartiles");
  double sink = 0;
  for (const Kernel& k : kernels) {
    if (!want.empty() && std::find(want.begin(), want.end(), k.name) == want.end()) continue;
    auto floor = [&] {
      if (k.one_input)
        losskit_bench::floor_one_input(s, g, threads);
      else
        losskit_bench::floor_two_inputs(s, t, g, threads);
    };
    floor();
    sink += k.run();  // warm-up: scratch, pages, thread start-up paths
    std::vector<double> ratio, kernel_ms, floor_ms;
    for (int r = 0; r < reps; ++r) {
      const double f = time_ms(floor);
      const double m = time_ms([&] { sink += k.run(); });
      ratio.push_back(m / f);
      kernel_ms.push_back(m);
      floor_ms.push_back(f);
    }
    std::printf("%-20s %10.2f %10.2f %8.2f %8.2f - %6.2f\n", k.name, quantile(kernel_ms, 0.5), quantile(floor_ms, 0.5),
                quantile(ratio, 0.5), quantile(ratio, 0.25), quantile(ratio, 0.75));
  }
  std::printf("(checksum %g)\n", sink);
  return 0;
}
