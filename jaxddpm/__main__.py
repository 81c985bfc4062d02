"""``python -m jaxddpm``: the ``jaxddpm`` command line."""

import sys

from jaxddpm.cli import main

sys.exit(main())
