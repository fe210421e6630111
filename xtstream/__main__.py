"""``python -m xtstream`` runs the command line."""

import sys

from xtstream.cli import main

sys.exit(main())
