"""Benchmarks of s2s2: `python -m bench.run_all` (or `make bench`) writes `bench/results.json` and
the tables of `BENCHMARKS.md`. Benchmarks report; they do not assert timings."""
