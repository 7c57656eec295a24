"""Benchmarks, run from the repository root (``python benchmarks/<name>.py``); they print tables."""
