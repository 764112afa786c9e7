"""Benchmarks (``python -m benchmarks.bench_expand``); results go to ``benchmarks/results/``."""
