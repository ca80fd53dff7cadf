"""qt layer: every Qt model, view, widget, dialog and plot of vmsnapgui."""

import os

from vmsnapgui.qt.pyside_workarounds import keep_bool_singletons_alive

# Before anything emits a signal: PySide6 6.12.0 would otherwise crash the app after a
# few thousand emits (see pyside_workarounds).
keep_bool_singletons_alive()

# Qt splits a large fill (a tall scroll bar, a view's background) into pieces for a
# pool of helper threads and waits for them. With the CPUs busy (QEMU saving a guest,
# libvirtd, our own loaders) the helpers wait for a CPU and the GUI thread waits for
# them: a repaint of the whole window took 14 ms instead of 3 on a 2-CPU machine. Fills
# on the GUI thread itself are fast enough for widgets. Read on the first paint, so
# setting it when this package is imported is early enough.
os.environ.setdefault("QT_NO_GUI_THREADPOOL", "1")
