"""`python -m vitkd` is the `vitkd` command."""

import sys

from vitkd.cli import main

sys.exit(main())
