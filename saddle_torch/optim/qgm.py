"""``qgm``: quasi-global momentum (Lin et al., ICML 2021).

g = ∇F + λx; m = β m̂ + g; u = g + β m (Nesterov) or m; x½ = x − η u; x_new = gossip(x½);
m̂ ← μ m̂ + (1 − μ)(x − x_new)/η. The buffer follows the net model change, neighbours included.
"""

from saddle_torch.optim.algorithm import Algorithm

ALGORITHM = Algorithm("qgm", sam=False, qgm=True, cross=False, summary="quasi-global momentum")
