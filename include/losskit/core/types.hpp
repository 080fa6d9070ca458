#pragma once
// Vocabulary shared by every kernel: matrix aliases, reductions, input kinds, the light views
// over labels and per-row weights that options structs hold, and the result type.

#include "losskit/core/config.hpp"

#include <Eigen/Core>

#include <cstddef>
#include <cstdint>
#include <vector>

namespace losskit {

template <class T>
using RowMatrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using RowMatrixXf = RowMatrix<float>;
using RowMatrixXd = RowMatrix<double>;

// What a reduced loss divides by. `mean` divides by the rows that count (not ignored), or by
// the sum of their weights; it is PyTorch's `batchmean` for a [rows, classes] input and the
// per-token mean of Liger-Kernel and TRL. Nothing divides by the number of classes. `none`
// keeps one value per row in LossResult::per_row (and the gradient is that of their sum).
enum class Reduction { none, sum, mean };

// How an input matrix is to be read. `logits`: any real scores, softmax(x / T) is taken per
// row. `log_probs`: rows already are log-probabilities, used as given (no renormalisation,
// temperature must be 1), and the gradient is w.r.t. those log-probabilities, as in
// torch.nn.functional.kl_div and Liger-Kernel's KL/JSD.
enum class Input { logits, log_probs };

// Non-owning view of integer labels (int32 or int64), one per row. Empty means "no labels".
class Labels {
 public:
  Labels() = default;
  Labels(const std::int64_t* p, std::size_t n) : p64_(p), size_(n) {}
  Labels(const std::int32_t* p, std::size_t n) : p32_(p), size_(n) {}
  Labels(const std::vector<std::int64_t>& v) : Labels(v.data(), v.size()) {}
  Labels(const std::vector<std::int32_t>& v) : Labels(v.data(), v.size()) {}
  template <class Derived>
  Labels(const Eigen::DenseBase<Derived>& v) : Labels(v.derived().data(), std::size_t(v.size())) {
    static_assert(Derived::IsVectorAtCompileTime, "losskit::Labels: labels must be a vector");
    static_assert(Eigen::internal::traits<Derived>::InnerStrideAtCompileTime == 1 ||
                      Derived::IsVectorAtCompileTime,
                  "losskit::Labels: labels must be contiguous");
  }

  bool empty() const noexcept { return size_ == 0; }
  std::size_t size() const noexcept { return size_; }
  std::int64_t operator[](std::size_t i) const noexcept { return p64_ ? p64_[i] : std::int64_t(p32_[i]); }

 private:
  const std::int64_t* p64_ = nullptr;
  const std::int32_t* p32_ = nullptr;
  std::size_t size_ = 0;
};

// Non-owning view of one non-negative weight per row (a 0/1 mask is a weight). Accepts float,
// double and uint8 storage. Empty means "every row has weight 1".
class Weights {
 public:
  Weights() = default;
  Weights(const float* p, std::size_t n) : pf_(p), size_(n) {}
  Weights(const double* p, std::size_t n) : pd_(p), size_(n) {}
  Weights(const std::uint8_t* p, std::size_t n) : pb_(p), size_(n) {}
  Weights(const std::vector<float>& v) : Weights(v.data(), v.size()) {}
  Weights(const std::vector<double>& v) : Weights(v.data(), v.size()) {}
  Weights(const std::vector<std::uint8_t>& v) : Weights(v.data(), v.size()) {}
  template <class Derived>
  Weights(const Eigen::DenseBase<Derived>& v) : Weights(v.derived().data(), std::size_t(v.size())) {
    static_assert(Derived::IsVectorAtCompileTime, "losskit::Weights: weights must be a vector");
  }

  bool empty() const noexcept { return size_ == 0; }
  std::size_t size() const noexcept { return size_; }
  double operator[](std::size_t i) const noexcept {
    return pd_ ? pd_[i] : pf_ ? double(pf_[i]) : double(pb_[i]);
  }

 private:
  const float* pf_ = nullptr;
  const double* pd_ = nullptr;
  const std::uint8_t* pb_ = nullptr;
  std::size_t size_ = 0;
};

// What every row-wise kernel returns.
struct LossResult {
  double value = 0.0;         // the reduced loss (sum, or mean); for `none`, the sum of per_row
  double denominator = 0.0;   // D: what the sum was divided by (1 for sum/none, the counted
                              // rows or their weight sum for mean, or the normalizer option)
  std::int64_t count = 0;     // rows that contributed (not ignored, non-zero weight)
  Eigen::VectorXd per_row;    // Reduction::none only: each row's w_r * L_r / D (0 for ignored rows)
};

}  // namespace losskit
