"""``python -m jobqueue``: the same command line as the ``jobqueue`` script."""

from jobqueue.cli import main

if __name__ == "__main__":
    main()
