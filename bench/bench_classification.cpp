// Robust classification losses, forward + gradient w.r.t. the logits, float, in one binary:
//   floor             one streaming read of the logits and one write of the gradient
//   spherical_z_loss  spherical Z-loss (a = 1, b = 0)
//   ldr_kl            LDR-KL with the reference's softplus / mean normalisation (margin 2, lambda 1)
//   ldr_kl_raw        LDR-KL on raw logits
//   aldr_kl           AdaptiveLDR (ALDR-KL, L1 normalisation, one lambda step per row), N = rows
//   elr               ELR (beta 0.7, lambda 3), N = rows: it also reads and writes one target-table
//                     row per logits row, so its own floor is twice the one here:
//   floor_elr         that traffic (2 reads + 2 writes: logits and target row in, gradient and
//                     target row out); report.py prints elr's ratio to it
// Shapes: 1024 x 32000 and 256 x 128256; threads 1 and 2. The ratios come from one run:
//
//   build/release/bench/bench_classification --benchmark_format=json > out.json
//   python3 bench/report.py out.json

#include "bench_support.hpp"

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

namespace {

using losskit::RowMatrixXf;

struct Inputs {
  RowMatrixXf x, g, table;  // table: a stand-in for ELR's target table (floor_elr)
  std::vector<std::int64_t> labels, ids;
};

// One input per shape, shared by every benchmark (built once).
Inputs& inputs(Eigen::Index rows, Eigen::Index cols) {
  return losskit_bench::per_shape<Inputs>(rows, cols, [](Eigen::Index r, Eigen::Index c) {
    Inputs in{RowMatrixXf(r, c), RowMatrixXf::Zero(r, c), RowMatrixXf::Zero(r, c), {}, {}};
    std::mt19937 rng(7);
    std::uniform_int_distribution<std::int64_t> label(0, c - 1);
    losskit_bench::fill_normal(rng, {&in.x});
    for (Eigen::Index k = 0; k < r; ++k) {
      in.labels.push_back(label(rng));
      in.ids.push_back(k);
    }
    return in;
  });
}

// ---- the floor: g = 2 x, one streaming pass (bench_support.hpp) ---------------------------------
void BM_floor(benchmark::State& st) {
  auto& in = inputs(st.range(0), st.range(1));
  losskit_bench::time_floor(st, in.x, in.g);
}

// ---- ELR's traffic: g = x + table, table = x - table, one streaming pass ---------------------------
void BM_floor_elr(benchmark::State& st) {
  auto& in = inputs(st.range(0), st.range(1));
  for (auto _ : st) {
    losskit_bench::floor_with_state(in.x, in.table, in.g, int(st.range(2)));
    benchmark::ClobberMemory();
  }
  losskit_bench::set_counters(st, in.x.rows(), in.x.cols(), 4);
}

// ---- losskit -------------------------------------------------------------------------------------
// Stateful losses keep one object per shape across iterations (each iteration is one more visit).
using Kernel = std::function<double(Inputs&, int threads)>;

const std::map<std::string, Kernel>& kernels() {
  static const std::map<std::string, Kernel> k{
      {"spherical_z_loss",
       [](Inputs& in, int threads) {
         losskit::SphericalZLossOptions o;
         o.threads = threads;
         return losskit::spherical_z_loss(in.x, in.labels, in.g, o).value;
       }},
      {"ldr_kl",
       [](Inputs& in, int threads) {
         losskit::LdrKlOptions o;
         o.threads = threads;
         return losskit::ldr_kl(in.x, in.labels, in.g, o).value;
       }},
      {"ldr_kl_raw",
       [](Inputs& in, int threads) {
         losskit::LdrKlOptions o;
         o.normalize = false;
         o.threads = threads;
         return losskit::ldr_kl(in.x, in.labels, in.g, o).value;
       }},
      {"aldr_kl",
       [](Inputs& in, int threads) {
         static std::map<Eigen::Index, std::unique_ptr<losskit::AdaptiveLDR>> state;
         auto& a = state[in.x.cols()];
         if (!a) a = std::make_unique<losskit::AdaptiveLDR>(std::size_t(in.x.rows()), 1.0);
         losskit::AdaptiveLdrOptions o;
         o.threads = threads;
         return a->loss(in.x, in.labels, in.ids, in.g, o).value;
       }},
      {"elr",
       [](Inputs& in, int threads) {
         static std::map<Eigen::Index, std::unique_ptr<losskit::ELR<float>>> state;
         auto& e = state[in.x.cols()];
         if (!e) e = std::make_unique<losskit::ELR<float>>(std::size_t(in.x.rows()), std::size_t(in.x.cols()));
         losskit::ElrOptions o;
         o.threads = threads;
         return e->loss(in.x, in.labels, in.ids, in.g, o).value;
       }},
  };
  return k;
}

void BM_losskit(benchmark::State& st, const std::string& name) {
  auto& in = inputs(st.range(0), st.range(1));
  const auto& fn = kernels().at(name);
  const int threads = int(st.range(2));
  losskit_bench::time_loss(st, 2, [&] { return fn(in, threads); });  // 1 read + 1 write per element
}

const std::vector<losskit_bench::Shape> kShapes{{1024, 32000}, {256, 128256}};

const int registered = [] {
  losskit_bench::register_grid("floor", kShapes, {1, 2}, BM_floor);
  losskit_bench::register_grid("floor_elr", kShapes, {1, 2}, BM_floor_elr);
  for (const auto& [name, fn] : kernels()) {
    (void)fn;
    losskit_bench::register_grid(name + "/losskit", kShapes, {1, 2}, BM_losskit, name);
  }
  return 0;
}();

}  // namespace
