"""Benchmarks: load generators and reports, run as ``python -m bench``."""
