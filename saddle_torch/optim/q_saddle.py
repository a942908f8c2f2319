"""``q-saddle``: Q-SADDLe = SAM + quasi-global momentum (SADDLe, arXiv 2405.13961).

QGM with its gradient replaced by the SAM gradient: g = ∇F(x + e) + λx, e = ρ ∇F/‖∇F‖.
"""

from saddle_torch.optim.algorithm import Algorithm

ALGORITHM = Algorithm("q-saddle", sam=True, qgm=True, cross=False, summary="SAM + quasi-global momentum")
