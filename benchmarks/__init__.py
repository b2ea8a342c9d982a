"""Benchmarks of jobqueue against a real PostgreSQL (run them as ``python -m benchmarks.X``)."""
