"""Benchmarks: scripts that print numbers (and save them under bench/results/), not timed tests."""
