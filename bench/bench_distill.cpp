// Distillation kernels, forward + gradient w.r.t. the student logits, float, in one binary:
//   floor                 one streaming read of two [rows, cols] inputs and one write of the gradient
//                         (non-temporal, as losskit writes large gradients; bench_support.hpp)
//   soft_cross_entropy    logits + probability targets (label smoothing 0.1)
//   kd_loss               alpha CE + (1 - alpha) T^2 KL, T = 2, alpha = 0.5
//   topk_kl_div           OSTQuant KL-Top, k = 1000, full-vocabulary form
//   topk_kl_div_renorm    the same, renormalised over the top-k
//   kl_div                losskit::kl_div (T = 1), the reference point of topk_kl_div
//   ps_kd_step            ProgressiveTargets::loss: targets from a [rows, cols] table, the table
//                         update and soft_cross_entropy (distinct sample indices: one pass)
//   floor_ps_kd_step      its own floor: the logits and the table row in, the gradient and the
//                         table row out (2 reads + 2 writes); report.py prints the ratio to it
// Shape 1024 x 32000; threads 1 and 2. Names are <kernel>/losskit/rows:R/cols:C/threads:N, so
// bench/report.py makes the ratio table:
//   build/release/bench/bench_distill --benchmark_format=json > out.json && python3 bench/report.py out.json

#include "bench_support.hpp"

#include <cmath>
#include <cstdint>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

namespace {

using losskit::RowMatrixXf;
constexpr std::int64_t kTopK = 1000;

struct Inputs {
  RowMatrixXf s, t, p, g, table;  // student, teacher logits, teacher probabilities, gradient, state (floor)
  std::vector<std::int64_t> labels, index;
};

Inputs& inputs(Eigen::Index rows, Eigen::Index cols) {
  return losskit_bench::per_shape<Inputs>(rows, cols, [](Eigen::Index nr, Eigen::Index nc) {
    Inputs in{RowMatrixXf(nr, nc), RowMatrixXf(nr, nc), RowMatrixXf(nr, nc), RowMatrixXf::Zero(nr, nc),
              RowMatrixXf::Zero(nr, nc), {}, {}};
    std::mt19937 rng(7);
    losskit_bench::fill_normal(rng, {&in.s, &in.t});
    for (Eigen::Index r = 0; r < nr; ++r) {
      const float m = in.t.row(r).maxCoeff();
      in.p.row(r) = (in.t.row(r).array() - m).exp().matrix();
      in.p.row(r) /= in.p.row(r).sum();
      in.labels.push_back((r * 7919) % nc);
      in.index.push_back(r);
    }
    return in;
  });
}

// ---- the floor: g = s + t, one pass (bench_support.hpp) ------------------------------------------
void BM_floor(benchmark::State& st) {
  auto& in = inputs(st.range(0), st.range(1));
  losskit_bench::time_floor(st, in.s, in.t, in.g);
}

template <class Fn>
void run(benchmark::State& st, Fn&& fn) {
  auto& in = inputs(st.range(0), st.range(1));
  const int threads = int(st.range(2));
  losskit_bench::time_loss(st, 3, [&] { return fn(in, threads); });  // 2 reads + 1 write, as the floor
}

void BM_soft_cross_entropy(benchmark::State& st) {
  run(st, [](Inputs& in, int threads) {
    losskit::SoftCrossEntropyOptions o;
    o.label_smoothing = 0.1;
    o.threads = threads;
    return losskit::soft_cross_entropy(in.s, in.p, in.g, o).value;
  });
}

void BM_kd_loss(benchmark::State& st) {
  run(st, [](Inputs& in, int threads) {
    losskit::KdLossOptions o;
    o.temperature = 2.0;
    o.alpha = 0.5;
    o.threads = threads;
    return losskit::kd_loss(in.s, in.t, in.labels, in.g, o).value;
  });
}

void BM_topk(benchmark::State& st, bool renorm) {
  run(st, [renorm](Inputs& in, int threads) {
    losskit::TopkKlOptions o;
    o.k = kTopK;
    o.renormalize = renorm;
    o.threads = threads;
    return losskit::topk_kl_div(in.s, in.t, in.g, o).value;
  });
}

// The same rows through kl_div (T = 1), for comparison with topk_kl_div in the same run.
void BM_kl_div(benchmark::State& st) {
  run(st, [](Inputs& in, int threads) {
    losskit::DivergenceOptions o;
    o.threads = threads;
    return losskit::kl_div(in.s, in.t, in.g, o).value;
  });
}

void BM_floor_ps_kd_step(benchmark::State& st) {
  auto& in = inputs(st.range(0), st.range(1));
  for (auto _ : st) {
    losskit_bench::floor_with_state(in.s, in.table, in.g, int(st.range(2)));
    benchmark::ClobberMemory();
  }
  losskit_bench::set_counters(st, in.s.rows(), in.s.cols(), 4);
}

void BM_ps_kd_step(benchmark::State& st) {
  const auto rows = st.range(0), cols = st.range(1);
  auto pt = std::make_unique<losskit::ProgressiveTargets<float>>(rows, cols);
  pt->update(inputs(rows, cols).index, inputs(rows, cols).t);
  run(st, [&pt](Inputs& in, int threads) {
    losskit::SoftCrossEntropyOptions o;
    o.threads = threads;
    return pt->loss(in.s, in.index, in.labels, 100, in.g, o).value;
  });
}

const std::vector<losskit_bench::Shape> kShapes{{1024, 32000}};

const int registered = [] {
  using losskit_bench::register_grid;
  register_grid("floor", kShapes, {1, 2}, BM_floor);
  register_grid("soft_cross_entropy/losskit", kShapes, {1, 2}, BM_soft_cross_entropy);
  register_grid("kd_loss/losskit", kShapes, {1, 2}, BM_kd_loss);
  register_grid("topk_kl_div/losskit", kShapes, {1, 2}, BM_topk, false);
  register_grid("topk_kl_div_renorm/losskit", kShapes, {1, 2}, BM_topk, true);
  register_grid("ps_kd_step/losskit", kShapes, {1, 2}, BM_ps_kd_step);
  register_grid("floor_ps_kd_step", kShapes, {1, 2}, BM_floor_ps_kd_step);
  register_grid("kl_div/losskit", kShapes, {1, 2}, BM_kl_div);
  return 0;
}();

}  // namespace
