"""``ngm``: neighbourhood gradient mean with cross-gradients (Aketi et al.).

Round 1 exchanges models; rank i computes g_ji = ∇F_i(x_j) for each neighbour j on its own batch and
sends it back; ĝ_i = Σ_{j∈N(i)∪{i}} w_ji g_ij (the data-variant mean). Local momentum (the wrapped
optimizer) on ĝ_i, then the local step and gossip.
"""

from saddle_torch.optim.algorithm import Algorithm

ALGORITHM = Algorithm("ngm", sam=False, qgm=False, cross=True, summary="neighbourhood gradient mean")
