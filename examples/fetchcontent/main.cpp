// losskit consumer: one KL divergence with its gradient. Exits 0 only if the loss is finite
// and non-negative (and the gradient finite).
#include <losskit/losskit.hpp>

#include <cmath>
#include <cstdio>

int main() {
  losskit::RowMatrixXf s(4, 10), t(4, 10), g(4, 10);
  s.setRandom();
  t.setRandom();
  auto r = losskit::kl_div(s, t, g);
  const double loss = double(r.value);
  const bool grad_finite = g.allFinite();
  std::printf("losskit consumer: kl_div = %.6f over %d rows, grad %s\n", loss, int(s.rows()),
              grad_finite ? "finite" : "NOT finite");
  return (std::isfinite(loss) && loss >= 0.0 && grad_finite) ? 0 : 1;
}
