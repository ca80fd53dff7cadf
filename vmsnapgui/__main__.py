"""``python -m vmsnapgui`` runs the ``vmsnap`` command line."""

import sys

from vmsnapgui.cli import main

sys.exit(main())
