#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "core/optim/qgm.h"
#include "core/optim/sam.h"

namespace saddle::optim {
namespace {

TEST(Sam, NormPerturbRestore) {
  std::vector<double> x{1, -2, 3, 0.5}, g{0.5, 1, -1, 2};
  EXPECT_DOUBLE_EQ(sam_norm_sq<double>(g.data(), nullptr, 0, 4), 0.25 + 1 + 1 + 4);
  EXPECT_DOUBLE_EQ(sam_norm_sq<double>(g.data(), x.data(), 0, 4), 0.25 + 4 + 9 + 1);
  const std::vector<double> x0 = x;
  std::vector<double> e(4);
  const double scale = 0.05 / std::sqrt(6.25);
  sam_perturb<double>(x.data(), g.data(), e.data(), scale, false, 0, 2);
  sam_perturb<double>(x.data(), g.data(), e.data(), scale, false, 2, 4);
  for (int i = 0; i < 4; ++i) {
    EXPECT_DOUBLE_EQ(e[i], scale * g[i]);
    EXPECT_DOUBLE_EQ(x[i], x0[i] + e[i]);
  }
  sam_restore<double>(x.data(), e.data(), 0, 4);
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(x[i], x0[i], 1e-15);
  sam_perturb<double>(x.data(), g.data(), e.data(), 2.0, true, 0, 4);
  for (int i = 0; i < 4; ++i) EXPECT_DOUBLE_EQ(e[i], 2.0 * x0[i] * x0[i] * g[i]);
}

TEST(Qgm, DirectionAndBufferUpdate) {
  std::vector<float> g{1, 2}, m{0.5f, -1}, x{2, 4};
  QgmOptions o;
  o.beta = 0.9;
  o.weight_decay = 0.1;
  o.nesterov = true;
  std::vector<float> gn = g;
  qgm_direction<float>(gn.data(), m.data(), x.data(), o, 0, 2);
  for (int i = 0; i < 2; ++i) {
    const float d = g[i] + 0.1f * x[i];
    EXPECT_FLOAT_EQ(gn[i], d + 0.9f * (0.9f * m[i] + d));
  }
  o.nesterov = false;
  std::vector<float> gm = g;
  qgm_direction<float>(gm.data(), m.data(), x.data(), o, 0, 2);
  for (int i = 0; i < 2; ++i) EXPECT_FLOAT_EQ(gm[i], 0.9f * m[i] + g[i] + 0.1f * x[i]);
  std::vector<float> prev{3, 3};
  qgm_buffer_update<float>(m.data(), prev.data(), x.data(), 0.9, 0.5, 0, 2);
  EXPECT_FLOAT_EQ(m[0], 0.9f * 0.5f + 0.1f * (3 - 2) / 0.5f);
  EXPECT_FLOAT_EQ(m[1], 0.9f * -1 + 0.1f * (3 - 4) / 0.5f);
  EXPECT_ANY_THROW(qgm_buffer_update<float>(m.data(), prev.data(), x.data(), 0.9, 0.0, 0, 2));
}

}  // namespace
}  // namespace saddle::optim
