"""The ``saddle_torch`` logger. Library code logs; it never prints.

Warnings (a rank left the job, a broadcast was interrupted) reach stderr through Python's default
handling. ``SADDLE_TORCH_LOG_LEVEL=INFO`` (the elastic launcher sets it for its workers) prints the
informational records too (a process joined, asked to join), one line each, on stderr.
"""

from __future__ import annotations

import logging
import os
import sys

LOG_ENV = "SADDLE_TORCH_LOG_LEVEL"
logger = logging.getLogger("saddle_torch")


def configure_from_env() -> None:
    """Send the ``saddle_torch`` logger's records to stderr when ``SADDLE_TORCH_LOG_LEVEL`` is set."""
    level = os.environ.get(LOG_ENV, "").strip().upper()
    if not level or logger.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


__all__ = ["LOG_ENV", "configure_from_env", "logger"]
