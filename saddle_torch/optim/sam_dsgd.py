"""``sam-dsgd``: decentralized SGD whose local gradient is the SAM gradient ∇F(x + ρ g/‖g‖)."""

from saddle_torch.optim.algorithm import Algorithm

ALGORITHM = Algorithm("sam-dsgd", sam=True, qgm=False, cross=False, summary="SAM + decentralized SGD")
