"""``python -m benchmarks``: the benchmark suite's command line (see :mod:`benchmarks.cli`)."""

from benchmarks.cli import main

if __name__ == "__main__":
    main()
