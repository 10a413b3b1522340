"""relay's benchmark suite: throughput, baselines, latency and discovery on the local stack.

`make bench` (= `python -m benchmarks`); see benchmarks/README.md.
"""
