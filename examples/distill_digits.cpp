// Knowledge distillation on the UCI handwritten digits (8x8 images, 10 classes).
//
// A teacher (MLP 64-128-10) is trained on the hard labels; then two identical small students
// (softmax regression on the 4x4 average-pooled image, 16 inputs) are trained: one on the hard
// labels only (losskit::cross_entropy), one on  alpha * CE(labels) + (1 - alpha) * T^2 KL(teacher/T ||
// student/T)  (losskit::kd_loss, one call for both terms). Every loss and logits gradient comes from
// losskit in one call; the rest is plain Eigen. With --divergence, the soft term is that
// divergence instead of KL (cross_entropy + the divergence, two calls, gradients added).
//
//   distill_digits [path/to/digits.csv.gz] [--divergence kl|jsd|reverse_kl|tvd]

#include <losskit/losskit.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#if LOSSKIT_HAVE_ZLIB
#include <zlib.h>
#endif

using losskit::RowMatrixXf;

struct Data {
  RowMatrixXf x;            // [n, 64], pixels scaled to [0, 1]
  std::vector<int> y;       // labels 0..9
};

static Data load_digits(const std::string& path) {
#if LOSSKIT_HAVE_ZLIB
  gzFile f = gzopen(path.c_str(), "rb");
  if (!f) throw std::runtime_error("cannot open " + path);
  std::string text;
  char buf[1 << 16];
  int got;
  while ((got = gzread(f, buf, sizeof buf)) > 0) text.append(buf, std::size_t(got));
  gzclose(f);
  std::vector<float> px;
  Data d;
  std::size_t pos = 0;
  while (pos < text.size()) {
    const std::size_t end = std::min(text.find('\n', pos), text.size());
    std::vector<int> vals;
    for (std::size_t i = pos; i < end;) {
      char* stop = nullptr;
      vals.push_back(int(std::strtol(text.c_str() + i, &stop, 10)));
      i = std::size_t(stop - text.c_str()) + 1;
    }
    if (vals.size() == 65) {
      for (int k = 0; k < 64; ++k) px.push_back(float(vals[std::size_t(k)]) / 16.f);
      d.y.push_back(vals[64]);
    }
    pos = end + 1;
  }
  d.x = Eigen::Map<RowMatrixXf>(px.data(), Eigen::Index(d.y.size()), 64);
  return d;
#else
  (void)path;
  throw std::runtime_error("built without zlib: apt-get install zlib1g-dev and rebuild");
#endif
}

// 8x8 -> 4x4 average pooling: the student sees a blurred, 16-pixel image.
static RowMatrixXf pool(const RowMatrixXf& x) {
  RowMatrixXf out(x.rows(), 16);
  for (Eigen::Index n = 0; n < x.rows(); ++n)
    for (int i = 0; i < 4; ++i)
      for (int j = 0; j < 4; ++j)
        out(n, i * 4 + j) = (x(n, 16 * i + 2 * j) + x(n, 16 * i + 2 * j + 1) + x(n, 16 * i + 8 + 2 * j) +
                             x(n, 16 * i + 8 + 2 * j + 1)) / 4.f;
  return out;
}

static double accuracy(const RowMatrixXf& logits, const std::vector<int>& y) {
  int ok = 0;
  for (Eigen::Index n = 0; n < logits.rows(); ++n) {
    Eigen::Index arg;
    logits.row(n).maxCoeff(&arg);
    ok += int(arg) == y[std::size_t(n)];
  }
  return double(ok) / double(y.size());
}

// A dense layer with SGD + momentum.
struct Dense {
  Eigen::MatrixXf w;  // [in, out]
  Eigen::RowVectorXf b;
  Eigen::MatrixXf vw;
  Eigen::RowVectorXf vb;
  Dense(int in, int out, std::mt19937& rng) : w(in, out), b(Eigen::RowVectorXf::Zero(out)) {
    std::normal_distribution<float> n(0.f, std::sqrt(2.f / float(in)));
    for (Eigen::Index i = 0; i < w.size(); ++i) w.data()[i] = n(rng);
    vw = Eigen::MatrixXf::Zero(in, out);
    vb = Eigen::RowVectorXf::Zero(out);
  }
  RowMatrixXf forward(const RowMatrixXf& x) const { return (x * w).rowwise() + b; }
  // Given d(loss)/d(output), updates the weights and returns d(loss)/d(input).
  RowMatrixXf backward(const RowMatrixXf& x, const RowMatrixXf& gout, float lr) {
    RowMatrixXf gin = gout * w.transpose();
    vw = 0.9f * vw - lr * (x.transpose() * gout);
    vb = 0.9f * vb - lr * gout.colwise().sum();
    w += vw;
    b += vb;
    return gin;
  }
};

struct Batches {
  std::vector<Eigen::Index> order;
  std::mt19937 rng;
  explicit Batches(Eigen::Index n, unsigned seed) : order(std::size_t(n)), rng(seed) {
    std::iota(order.begin(), order.end(), Eigen::Index(0));
  }
  template <class Fn>
  void epoch(Eigen::Index batch, Fn&& fn) {
    std::shuffle(order.begin(), order.end(), rng);
    for (std::size_t b = 0; b < order.size(); b += std::size_t(batch)) {
      const std::size_t e = std::min(order.size(), b + std::size_t(batch));
      fn(std::vector<Eigen::Index>(order.begin() + std::ptrdiff_t(b), order.begin() + std::ptrdiff_t(e)));
    }
  }
};

template <class M>
static M take(const M& m, const std::vector<Eigen::Index>& idx) {
  M out(Eigen::Index(idx.size()), m.cols());
  for (std::size_t i = 0; i < idx.size(); ++i) out.row(Eigen::Index(i)) = m.row(idx[i]);
  return out;
}

static std::vector<std::int64_t> take(const std::vector<std::int64_t>& v, const std::vector<Eigen::Index>& idx) {
  std::vector<std::int64_t> out;
  for (const Eigen::Index i : idx) out.push_back(v[std::size_t(i)]);
  return out;
}

static losskit::LossResult soft_loss(const std::string& kind, const RowMatrixXf& s, const RowMatrixXf& t,
                                     RowMatrixXf& g, const losskit::DivergenceOptions& o) {
  if (kind == "jsd") return losskit::jsd(s, t, g, o);
  if (kind == "reverse_kl") return losskit::reverse_kl_div(s, t, g, o);
  if (kind == "tvd") return losskit::tvd(s, t, g, o);
  return losskit::kl_div(s, t, g, o);
}

int main(int argc, char** argv) {
  std::string path = std::string(LOSSKIT_SOURCE_DIR) + "/examples/data/digits.csv.gz";
  std::string divergence;  // empty: kd_loss (cross entropy + T^2 KL in one call)
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) == "--divergence" && i + 1 < argc)
      divergence = argv[++i];
    else
      path = argv[i];
  }
  const Data all = load_digits(path);
  std::printf("digits: %zu images of 8x8 pixels, 10 classes (UCI, CC BY 4.0)\n", all.y.size());

  // Deterministic split: 1297 train, 500 test.
  std::vector<Eigen::Index> perm(all.y.size());
  std::iota(perm.begin(), perm.end(), Eigen::Index(0));
  std::shuffle(perm.begin(), perm.end(), std::mt19937(2024));
  const std::vector<Eigen::Index> tr(perm.begin(), perm.end() - 500), te(perm.end() - 500, perm.end());
  const RowMatrixXf xtr = take(all.x, tr), xte = take(all.x, te);
  std::vector<int> ytr, yte;
  for (auto i : tr) ytr.push_back(all.y[std::size_t(i)]);
  for (auto i : te) yte.push_back(all.y[std::size_t(i)]);
  const std::vector<std::int64_t> labels_tr(ytr.begin(), ytr.end());
  const RowMatrixXf ptr = pool(xtr), pte = pool(xte);

  // ---- teacher: 64 -> 128 (ReLU) -> 10, cross entropy --------------------------------------------
  std::mt19937 rng(1);
  Dense l1(64, 128, rng), l2(128, 10, rng);
  Batches tb(xtr.rows(), 3);
  for (int epoch = 0; epoch < 60; ++epoch)
    tb.epoch(64, [&](const std::vector<Eigen::Index>& idx) {
      const RowMatrixXf x = take(xtr, idx);
      const RowMatrixXf h = l1.forward(x).cwiseMax(0.f);
      const RowMatrixXf z = l2.forward(h);
      RowMatrixXf g(z.rows(), z.cols());
      losskit::cross_entropy(z, take(labels_tr, idx), g);
      RowMatrixXf gh = l2.backward(h, g, 0.05f);
      gh = (h.array() > 0.f).select(gh, 0.f);
      l1.backward(x, gh, 0.05f);
    });
  const RowMatrixXf teacher_tr = l2.forward(l1.forward(xtr).cwiseMax(0.f));
  const RowMatrixXf teacher_te = l2.forward(l1.forward(xte).cwiseMax(0.f));
  std::printf("teacher  MLP 64-128-10 on 8x8 pixels       test accuracy %.1f%%\n", 100 * accuracy(teacher_te, yte));

  // ---- students: 16 -> 10 softmax regression, with and without the teacher ----------------------
  const double alpha = 0.5, temperature = 2.0;
  auto train_student = [&](bool distill) {
    std::mt19937 r(5);
    Dense lin(16, 10, r);
    Batches sb(ptr.rows(), 7);
    double last = 0;
    for (int epoch = 0; epoch < 150; ++epoch)
      sb.epoch(64, [&](const std::vector<Eigen::Index>& idx) {
        const RowMatrixXf x = take(ptr, idx), tz = take(teacher_tr, idx);
        const std::vector<std::int64_t> lab = take(labels_tr, idx);
        const RowMatrixXf z = lin.forward(x);
        RowMatrixXf g(z.rows(), z.cols());
        if (distill && divergence.empty()) {  // both terms and their gradient in one call
          losskit::KdLossOptions kd;
          kd.alpha = alpha;
          kd.temperature = temperature;  // scale_by_t_squared is on by default (Hinton)
          last = losskit::kd_loss(z, tz, lab, g, kd).value;
        } else {
          losskit::CrossEntropyOptions hard;
          hard.grad_scale = distill ? alpha : 1.0;
          last = losskit::cross_entropy(z, lab, g, hard).value;
          if (distill) {
            losskit::DivergenceOptions soft;
            soft.temperature = temperature;
            soft.scale_by_t_squared = true;  // Hinton: keep the soft gradient's scale
            soft.grad_scale = 1.0 - alpha;
            RowMatrixXf gs(z.rows(), z.cols());
            last = alpha * last + (1 - alpha) * soft_loss(divergence, z, tz, gs, soft).value;
            g += gs;
          }
        }
        lin.backward(x, g, 0.1f);
      });
    const RowMatrixXf zte = lin.forward(pte);
    return std::make_pair(accuracy(zte, yte), last);
  };
  const auto plain = train_student(false);
  const auto kd = train_student(true);
  std::printf("student  linear on 4x4 pooled pixels        test accuracy %.1f%%  (hard labels only)\n",
              100 * plain.first);
  std::printf("student  linear on 4x4 pooled pixels        test accuracy %.1f%%  (distilled: %.1f CE + %.1f T^2 %s, T = %.0f)\n",
              100 * kd.first, alpha, 1 - alpha, divergence.empty() ? "kl (kd_loss)" : divergence.c_str(), temperature);
  return std::isfinite(kd.second) && std::isfinite(plain.second) ? 0 : 1;
}
