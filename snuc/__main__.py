"""``python -m snuc`` runs the command line."""

import sys

from snuc.cli import main

sys.exit(main())
