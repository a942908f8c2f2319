"""``dsgd``: decentralized SGD with local momentum (DSGDm-N).

u = momentum of (g + λx) — computed by the wrapped optimizer (use ``SGD(momentum=β, nesterov=True,
weight_decay=λ)`` for DSGDm-N); x½ = x − η u; gossip x½ (ATC) or mix the pre-step models (AWC).
"""

from saddle_torch.optim.algorithm import Algorithm

ALGORITHM = Algorithm("dsgd", sam=False, qgm=False, cross=False, summary="decentralized SGD, local momentum")
