"""Elastic gossip: training that survives dead and stalled ranks without a restart.

Launch with ``python -m saddle_torch.run --nproc N script.py`` and call
``saddle_torch.init(elastic=True)``; docs/errors.md ("Elastic training") has the guarantees.
"""

from __future__ import annotations

from saddle_torch.elastic.membership import Agreement, Membership
from saddle_torch.elastic.repair import repair
from saddle_torch.elastic.runtime import ElasticRuntime

__all__ = ["Agreement", "ElasticRuntime", "Membership", "repair"]
