"""qt layer: every Qt model, view, widget, dialog and plot of vmsnapgui."""

from vmsnapgui.qt.pyside_workarounds import keep_bool_singletons_alive

# Before anything emits a signal: PySide6 6.12.0 would otherwise crash the app after a
# few thousand emits (see pyside_workarounds).
keep_bool_singletons_alive()
