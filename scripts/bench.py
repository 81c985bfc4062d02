"""Benchmark jaxddpm against the PyTorch reference; same as ``jaxddpm bench``."""

import sys

from parity.bench import main

if __name__ == "__main__":
    sys.exit(main())
