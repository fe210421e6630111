"""``python -m xtstream.cli`` runs the command line."""

import sys

from xtstream.cli import main

sys.exit(main())
