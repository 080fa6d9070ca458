// Preference alignment from logits on a toy language model: DPO (or another loss type of
// losskit::dpo) teaches a bigram model to count.
//
// The model: next-token logits W[prev, :] (a V x V table, V = 128), so a sequence's logits are
// rows of W picked by its tokens. A sequence is a prompt of 2 tokens and a completion of 6.
// Preference pairs: the chosen completion counts up from the prompt's last token (t+1 = t + 1
// mod V; each step right with probability 0.9), the rejected one is sampled from the frozen
// reference model (the policy at the start), as preference data usually is. Per step, with the
// per-token log-probs summed over the completion only (the prompt row masked, as TRL does):
//   r = losskit::dpo_step(policy logits, reference logits, targets, layout, grad, {beta, loss type})
// which is, in one pass over the logits (preference/dpo_step.hpp),
//   pi  = losskit::sequence_logprobs(policy logits)       rho = the same for the reference
//   r   = losskit::dpo(pi_chosen, pi_rejected, rho_chosen, rho_rejected, {beta, loss type})
//   losskit::sequence_logprobs_backward(policy logits, r.d_policy_*)  -> gradient w.r.t. logits
// (the held-out evaluation uses the first two), and the logits gradient is added into W's rows
// (plain Eigen; Adam). Reported: the DPO loss,
// the reward accuracy and margin on held-out pairs, and how often greedy decoding from held-out
// prompts counts correctly (about 1/V before training).
//
//   dpo_toy [--loss sigmoid|ipo|hinge|robust|apo_zero|sppo_hard|nca_pair] [--beta B] [--steps N]
//
// (sppo_hard and nca_pair pull the rewards toward fixed values, about 1/beta nats per completion:
// at beta 0.1 that moves each token by ~1 nat, not enough to make counting the greedy choice;
// try --beta 0.01.)
// Exits with status 1 if greedy decoding counts correctly less than 80% of the time at the end
// (the check ctest runs).

#include <losskit/losskit.hpp>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using losskit::RowMatrixXf;

constexpr int kV = 128, kPrompt = 2, kCompletion = 6, kLen = kPrompt + kCompletion;
constexpr int kRows = kLen - 1;  // one prediction per token after the first

std::vector<int> sample_from(const RowMatrixXf& W, int first, int second, std::mt19937& rng) {
  std::vector<int> s{first, second};
  while (int(s.size()) < kLen) {
    const Eigen::VectorXf z = W.row(s.back()).transpose();
    const Eigen::ArrayXf p = (z.array() - z.maxCoeff()).exp();
    std::discrete_distribution<int> next(p.data(), p.data() + p.size());
    s.push_back(next(rng));
  }
  return s;
}

std::vector<int> counting(int first, int second, double right, std::mt19937& rng) {
  std::uniform_real_distribution<double> u(0.0, 1.0);
  std::uniform_int_distribution<int> any(0, kV - 1);
  std::vector<int> s{first, second};
  while (int(s.size()) < kLen) s.push_back(u(rng) < right ? (s.back() + 1) % kV : any(rng));
  return s;
}

// A batch of pairs as one [2 P * kRows, V] logits matrix (chosen sequences first), the targets
// and the loss mask (the row that predicts the prompt's second token does not count).
struct Batch {
  std::vector<std::vector<int>> seqs;  // 2P sequences: chosen 0..P-1, rejected P..2P-1
  std::vector<std::int64_t> inputs, targets;
  std::vector<double> mask;
  int pairs() const { return int(seqs.size()) / 2; }
};

Batch make_batch(int pairs, const RowMatrixXf& ref, std::mt19937& rng) {
  std::uniform_int_distribution<int> any(0, kV - 1);
  Batch b;
  std::vector<std::vector<int>> rejected;
  for (int i = 0; i < pairs; ++i) {
    const int p0 = any(rng), p1 = any(rng);
    b.seqs.push_back(counting(p0, p1, 0.9, rng));
    rejected.push_back(sample_from(ref, p0, p1, rng));
  }
  b.seqs.insert(b.seqs.end(), rejected.begin(), rejected.end());
  for (const auto& s : b.seqs)
    for (int t = 0; t < kRows; ++t) {
      b.inputs.push_back(s[std::size_t(t)]);
      b.targets.push_back(s[std::size_t(t) + 1]);
      b.mask.push_back(t + 1 >= kPrompt ? 1.0 : 0.0);
    }
  return b;
}

RowMatrixXf logits_of(const RowMatrixXf& W, const Batch& b) {
  RowMatrixXf z(Eigen::Index(b.inputs.size()), kV);
  for (std::size_t r = 0; r < b.inputs.size(); ++r) z.row(Eigen::Index(r)) = W.row(b.inputs[r]);
  return z;
}

struct Step {
  losskit::PreferenceResult r;
  RowMatrixXf dW;
};

// One DPO evaluation: loss, rewards, and (with_grad) the gradient w.r.t. W.
Step evaluate(const RowMatrixXf& W, const RowMatrixXf& ref, const Batch& b, const losskit::DpoOptions& o,
              bool with_grad) {
  const int P = b.pairs();
  const auto layout = losskit::SequenceLayout::fixed(2 * P, kRows);
  losskit::SequenceLogprobOptions so;
  so.loss_mask = b.mask;
  const RowMatrixXf z = logits_of(W, b), zr = logits_of(ref, b);
  Step s;
  if (!with_grad) {
    const losskit::SequenceLogprobs pi = losskit::sequence_logprobs(z, b.targets, layout, so);
    const losskit::SequenceLogprobs rho = losskit::sequence_logprobs(zr, b.targets, layout, so);
    s.r = losskit::dpo(pi.sum.head(P), pi.sum.tail(P), rho.sum.head(P), rho.sum.tail(P), o);
    return s;
  }
  RowMatrixXf g(z.rows(), kV);
  s.r = losskit::dpo_step(z, zr, b.targets, layout, g, o, so).loss;
  s.dW = RowMatrixXf::Zero(kV, kV);
  for (std::size_t r = 0; r < b.inputs.size(); ++r) s.dW.row(b.inputs[r]) += g.row(Eigen::Index(r));
  return s;
}

// Fraction of greedy steps from held-out prompts that count up.
double greedy_counting(const RowMatrixXf& W, const Batch& held_out) {
  int right = 0, total = 0;
  for (int i = 0; i < held_out.pairs(); ++i) {
    int prev = held_out.seqs[std::size_t(i)][kPrompt - 1];
    for (int t = 0; t < kCompletion; ++t) {
      Eigen::Index next;
      W.row(prev).maxCoeff(&next);
      right += int(next) == (prev + 1) % kV;
      ++total;
      prev = int(next);
    }
  }
  return double(right) / double(total);
}

losskit::DpoLoss parse_loss(const std::string& s) {
  static const std::map<std::string, losskit::DpoLoss> names{
      {"sigmoid", losskit::DpoLoss::sigmoid}, {"ipo", losskit::DpoLoss::ipo},
      {"hinge", losskit::DpoLoss::hinge},     {"robust", losskit::DpoLoss::robust},
      {"apo_zero", losskit::DpoLoss::apo_zero}, {"sppo_hard", losskit::DpoLoss::sppo_hard},
      {"nca_pair", losskit::DpoLoss::nca_pair}};
  const auto it = names.find(s);
  if (it == names.end()) throw std::invalid_argument("unknown --loss " + s);
  return it->second;
}

}  // namespace

int main(int argc, char** argv) {
  losskit::DpoOptions o;
  int steps = 150;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (i + 1 < argc && a == "--loss") {
      o.loss_types = {parse_loss(argv[++i])};
    } else if (i + 1 < argc && a == "--beta") {
      o.beta = std::stod(argv[++i]);
    } else if (i + 1 < argc && a == "--steps") {
      steps = std::stoi(argv[++i]);
    } else {
      std::fprintf(stderr, "usage: dpo_toy [--loss sigmoid|ipo|hinge|robust|apo_zero|sppo_hard|nca_pair] [--beta B] [--steps N]\n");
      return 2;
    }
  }
  const std::vector<double> lengths(32, double(kCompletion));  // (options hold views: keep it alive)
  if (o.loss_types.front() == losskit::DpoLoss::ipo) {  // IPO averages over the completion tokens
    o.chosen_lengths = lengths;
    o.rejected_lengths = lengths;
  }

  std::mt19937 rng(2024);
  std::normal_distribution<float> init(0.f, 0.5f);
  RowMatrixXf W(kV, kV);
  for (Eigen::Index i = 0; i < W.size(); ++i) W.data()[i] = init(rng);
  const RowMatrixXf ref = W;  // the frozen reference model
  const Batch held_out = make_batch(32, ref, rng);

  // Adam on W
  RowMatrixXf m = RowMatrixXf::Zero(kV, kV), v = RowMatrixXf::Zero(kV, kV);
  const float lr = 0.05f, b1 = 0.9f, b2 = 0.999f;
  auto report = [&](int step) {
    const Step e = evaluate(W, ref, held_out, o, false);
    std::printf("step %4d  held-out: %s loss %.4f  reward accuracy %.2f  margin %+.3f  greedy counting %.2f\n", step,
                losskit::dpo_loss_name(o.loss_types.front()), e.r.value, e.r.accuracy, e.r.margins.mean(),
                greedy_counting(W, held_out));
  };
  report(0);
  for (int step = 1; step <= steps; ++step) {
    const Batch b = make_batch(32, ref, rng);
    const Step s = evaluate(W, ref, b, o, true);
    m = b1 * m + (1 - b1) * s.dW;
    v = b2 * v + (1 - b2) * s.dW.cwiseProduct(s.dW);
    const float c1 = 1 - std::pow(b1, float(step)), c2 = 1 - std::pow(b2, float(step));
    W.array() -= lr * (m.array() / c1) / ((v.array() / c2).sqrt() + 1e-8f);
    if (step % 25 == 0 || step == steps) report(step);
  }
  const double counted = greedy_counting(W, held_out);
  if (counted < 0.8) {
    std::printf("greedy decoding counts correctly %.2f of the time (< 0.80): training did not work\n", counted);
    return 1;
  }
  return 0;
}
