#pragma once
// losskit: loss and divergence kernels with fused gradients, over Eigen, SIMD through xsimd.
// The umbrella header: every public header of the library.

#include "losskit/core/config.hpp"
#include "losskit/core/tensor.hpp"
#include "losskit/core/types.hpp"
#include "losskit/core/views.hpp"

#include "losskit/divergence/cauchy_schwarz_div.hpp"
#include "losskit/divergence/jsd.hpp"
#include "losskit/divergence/kl_div.hpp"
#include "losskit/divergence/reverse_kl_div.hpp"
#include "losskit/divergence/skew_kl_div.hpp"
#include "losskit/divergence/skew_reverse_kl_div.hpp"
#include "losskit/divergence/tvd.hpp"
