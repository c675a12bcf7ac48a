"""Throughput benchmarks behind `make bench`; run from the repository root as modules."""
