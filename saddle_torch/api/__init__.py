"""The public functions of ``saddle_torch``, each in the module of its job (re-exported by the package)."""
