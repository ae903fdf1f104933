"""`python -m lienzo.cli`: the same as the `lienzo` command."""

import sys

from lienzo.cli import main

sys.exit(main())
