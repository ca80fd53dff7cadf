"""vmsnapgui: snapshot trees, delta sizes and snapshot operations for libvirt virtual machines."""

__version__ = "0.1.0"
