"""Benchmarks of jobqueue against the raw SQL floor, pgqueuer, procrastinate and
Graphile Worker.

Run them as ``python -m benchmarks all`` (see ``benchmarks/README.md``).
"""
