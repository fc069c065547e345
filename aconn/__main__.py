"""``python -m aconn check ...``: see :mod:`aconn.check`."""

import sys

from .check import main

sys.exit(main())
