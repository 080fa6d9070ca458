#pragma once
// Row views over row-major Eigen tensors: rank 2 [rows, cols] or rank 3 [batch, seq, vocab]
// (taken as batch * seq rows of vocab). Include this header (or losskit/losskit.hpp) to pass
// Eigen::Tensor / Eigen::TensorMap arguments; a column-major tensor does not compile.

#include <unsupported/Eigen/CXX11/Tensor>

#include "losskit/core/views.hpp"

namespace losskit {
namespace detail {
template <class Scalar, int Rank, int Options, class TensorT>
struct tensor_rows {
  static constexpr bool supported = true;
  using scalar = std::remove_const_t<Scalar>;
  static_assert(Rank == 2 || Rank == 3, "losskit: tensors must have rank 2 or 3");
  static_assert((Options & Eigen::RowMajor) != 0, "losskit: tensors must be row-major");

  static RowsView<const scalar> view(const TensorT& x) {
    const auto cols = std::ptrdiff_t(x.dimension(Rank - 1));
    std::ptrdiff_t rows = 1;
    for (int d = 0; d + 1 < Rank; ++d) rows *= std::ptrdiff_t(x.dimension(d));
    return {x.data(), rows, cols, cols};
  }
  static RowsView<scalar> mutable_view(TensorT& x) {
    static_assert(!std::is_const_v<Scalar>, "losskit: the gradient output must be writable");
    const auto v = view(x);
    return {const_cast<scalar*>(v.data), v.rows, v.cols, v.stride};
  }
};
}  // namespace detail

template <class Scalar, int Rank, int Options, class Index>
struct row_access<Eigen::Tensor<Scalar, Rank, Options, Index>>
    : detail::tensor_rows<Scalar, Rank, Options, Eigen::Tensor<Scalar, Rank, Options, Index>> {};

template <class Scalar, int Rank, int Options, class Index, int MapOptions, template <class> class MakePointer>
struct row_access<Eigen::TensorMap<Eigen::Tensor<Scalar, Rank, Options, Index>, MapOptions, MakePointer>>
    : detail::tensor_rows<Scalar, Rank, Options,
                          Eigen::TensorMap<Eigen::Tensor<Scalar, Rank, Options, Index>, MapOptions, MakePointer>> {};

}  // namespace losskit
