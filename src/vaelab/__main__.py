"""``python -m vaelab ...``: the command line (and what ``torchrun -m vaelab`` runs)."""

import sys

from vaelab.cli import main

sys.exit(main())
