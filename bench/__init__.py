"""Benchmarks: speed (`python -m bench.speed`) and retrieval quality (`python -m bench.quality`)."""
