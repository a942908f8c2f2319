"""saddle_torch's version (one place: setup.py reads it, ``saddle_torch.__version__`` imports it)."""

__version__ = "0.1.0"
