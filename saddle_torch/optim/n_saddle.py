"""``n-saddle``: N-SADDLe = SAM + neighbourhood cross-gradients (SADDLe, arXiv 2405.13961).

NGM with every gradient replaced by its SAM gradient: the self term, and with ``cross_sam=True`` each
cross term (its own perturbation from that model's gradient on the local batch).
"""

from saddle_torch.optim.algorithm import Algorithm

ALGORITHM = Algorithm(
    "n-saddle", sam=True, qgm=False, cross=True, summary="SAM + neighbourhood gradient mean"
)
