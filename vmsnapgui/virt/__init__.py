"""libvirt layer: connections, the event loop thread, loading and operations.

Imports libvirt, never Qt.
"""

import os

# libvirt logs warnings and errors to stderr by default; we catch every error and
# explain it, so that output would only repeat it as noise. Set before libvirt loads
# (it reads the variable once); a user's own LIBVIRT_LOG_* / LIBVIRT_DEBUG setting wins.
if not any(key in os.environ for key in ("LIBVIRT_LOG_OUTPUTS", "LIBVIRT_DEBUG")):
    os.environ["LIBVIRT_LOG_OUTPUTS"] = "4:file:" + os.devnull
    # The embedded QEMU driver sets up logging again as a daemon would; the filter
    # keeps its warnings quiet too.
    os.environ.setdefault("LIBVIRT_LOG_FILTERS", "4:*")
