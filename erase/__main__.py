"""`python -m erase ...`: the same as the `erase` command."""

import sys

from erase.cli import main

sys.exit(main())
