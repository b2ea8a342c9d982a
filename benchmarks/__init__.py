"""Benchmarks of jobqueue against the raw SQL floor, pgqueuer and procrastinate.

Run them as ``python -m benchmarks all`` (see ``benchmarks/README.md``).
"""
