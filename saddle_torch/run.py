"""``python -m saddle_torch.run --nproc N script.py ...``: the elastic launcher (elastic/launcher.py)."""

from __future__ import annotations

import sys

from saddle_torch.elastic.launcher import main

if __name__ == "__main__":
    code = main()
    sys.exit(code if code >= 0 else 1)
