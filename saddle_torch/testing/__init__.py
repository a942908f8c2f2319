"""Test and benchmark helpers: :mod:`saddle_torch.testing.cluster` emulates a cluster on one machine."""
