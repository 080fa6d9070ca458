#pragma once
// Zero-copy row views over caller memory. A kernel sees a matrix as `rows` contiguous rows of
// `cols` elements, `stride` elements apart. Anything dense and row-major works: Matrix, Map
// (with an outer stride), blocks of rows, Ref; and, through core/tensor.hpp, row-major
// Eigen::Tensor / TensorMap of rank 2 ([rows, cols]) or rank 3 ([batch, seq, vocab], taken as
// batch * seq rows). A column-major argument does not compile: it would need a copy.

#include "losskit/core/config.hpp"

#include <Eigen/Core>

#include <cstddef>
#include <type_traits>

namespace losskit {

template <class T>
struct RowsView {
  T* data = nullptr;
  std::ptrdiff_t rows = 0;
  std::ptrdiff_t cols = 0;
  std::ptrdiff_t stride = 0;  // elements between the starts of two consecutive rows

  T* row(std::ptrdiff_t r) const noexcept { return data + r * stride; }
};

// row_access<X> tells how to see an argument of type X as rows. Specialised here for Eigen
// dense objects and in core/tensor.hpp for Eigen tensors; users may specialise it for their
// own tensor types (provide `scalar`, `view(const X&)` and, for outputs, `mutable_view(X&)`).
template <class X, class = void>
struct row_access {
  static constexpr bool supported = false;
};

template <class X>
struct row_access<X, std::enable_if_t<std::is_base_of_v<Eigen::DenseBase<X>, X>>> {
  static constexpr bool supported = true;
  using scalar = typename X::Scalar;
  static constexpr bool direct = bool(Eigen::internal::traits<X>::Flags & Eigen::DirectAccessBit);
  static constexpr bool writable = bool(Eigen::internal::traits<X>::Flags & Eigen::LvalueBit);

  static void check_layout() {
    static_assert(direct,
                  "losskit: inputs must be stored matrices (Matrix, Map, Block, Ref), not Eigen "
                  "expressions; evaluate the expression into a RowMatrix first");
    static_assert(bool(X::IsRowMajor) || X::ColsAtCompileTime == 1,
                  "losskit: matrices must be row-major (losskit::RowMatrix<T>, or Map/Ref of one); "
                  "a column-major argument would need a copy");
    static_assert(Eigen::internal::traits<X>::InnerStrideAtCompileTime == 1 ||
                      Eigen::internal::traits<X>::InnerStrideAtCompileTime == Eigen::Dynamic,
                  "losskit: rows must be contiguous (inner stride 1)");
  }
  static RowsView<const scalar> view(const X& x) {
    check_layout();
    return {x.data(), x.rows(), x.cols(), X::IsRowMajor ? x.outerStride() : 1};
  }
  static RowsView<scalar> mutable_view(X& x) {
    check_layout();
    static_assert(writable, "losskit: the gradient output must be writable");
    return {const_cast<scalar*>(x.data()), x.rows(), x.cols(), X::IsRowMajor ? x.outerStride() : 1};
  }
};

template <class X>
inline constexpr bool is_rows_v = row_access<std::remove_cv_t<std::remove_reference_t<X>>>::supported;

template <class X>
using scalar_of_t = typename row_access<std::remove_cv_t<std::remove_reference_t<X>>>::scalar;

template <class X>
inline auto rows_view(const X& x) {
  return row_access<X>::view(x);
}

template <class X>
inline auto mutable_rows_view(X& x) {
  return row_access<std::remove_cv_t<X>>::mutable_view(x);
}

namespace detail {
// Dynamic inner-stride case (e.g. a Map with InnerStride<>): checked at run time.
template <class X>
inline bool has_unit_inner_stride(const X& x) {
  if constexpr (std::is_base_of_v<Eigen::DenseBase<X>, X>) {
    return x.innerStride() == 1 || x.cols() <= 1;
  } else {
    return true;
  }
}
}  // namespace detail

}  // namespace losskit
