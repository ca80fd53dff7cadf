"""``python -m vmsnapgui.cli`` runs ``vmsnap``."""

import sys

from vmsnapgui.cli import main

sys.exit(main())
