import sys

from parity.report import main

sys.exit(main())
