"""`python -m rtmw_edge.cli ...` is `rtmw-edge ...`."""

import sys

from . import main

sys.exit(main())
