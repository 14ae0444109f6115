"""Micro-benchmarks: one cost of one script measured in isolation (python -m benchmark.micro.<name>)."""
