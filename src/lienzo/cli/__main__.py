"""`python -m lienzo.cli`: the same as the `lienzo` command."""

import sys

from . import main

sys.exit(main())
