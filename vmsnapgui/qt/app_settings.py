"""What the app remembers between starts: connections, window geometry, splitters, columns.

Stored with :class:`QSettings` (an INI file under the user's config directory). Tests
and ``--screenshot`` runs pass their own (or a throw-away) settings object, so they
never touch the user's.
"""

from __future__ import annotations

from PySide6.QtCore import QByteArray, QSettings

ORGANISATION = "vmsnapgui"
APPLICATION = "vmsnapgui"
_CONNECTIONS = "connections/uris"


def user_settings() -> QSettings:
    """The user's settings file (``~/.config/vmsnapgui/vmsnapgui.ini``)."""
    return QSettings(
        QSettings.Format.IniFormat, QSettings.Scope.UserScope, ORGANISATION, APPLICATION
    )


def settings_at(path: str) -> QSettings:
    """Settings in a given file (tests, one-off runs)."""
    return QSettings(path, QSettings.Format.IniFormat)


class AppSettings:
    """Typed access to the remembered values."""

    def __init__(self, settings: QSettings, *, read_only: bool = False) -> None:
        self._settings = settings
        self.read_only = read_only

    @property
    def file_name(self) -> str:
        """Where the settings live."""
        return self._settings.fileName()

    def connections(self) -> list[str]:
        """Remembered connection URIs (or the demo-lab entry), in the order added."""
        value = self._settings.value(_CONNECTIONS, [])
        if isinstance(value, str):
            return [value] if value else []
        if isinstance(value, list):
            return [str(item) for item in value if str(item)]
        return []

    def has_connections_entry(self) -> bool:
        """True once any connection list was saved (even an empty one)."""
        return self._settings.contains(_CONNECTIONS)

    def set_connections(self, entries: list[str]) -> None:
        """Remember these connections for the next start."""
        if self.read_only:
            return
        unique = list(dict.fromkeys(entries))
        self._settings.setValue(_CONNECTIONS, unique)
        self._settings.sync()

    def add_connection(self, entry: str) -> None:
        """Remember one more connection."""
        self.set_connections([*self.connections(), entry])

    def remove_connection(self, entry: str) -> None:
        """Forget a connection."""
        self.set_connections([item for item in self.connections() if item != entry])

    def state(self, key: str) -> QByteArray | None:
        """A saved widget state (geometry, splitter, header), if any."""
        value = self._settings.value(f"window/{key}")
        return value if isinstance(value, QByteArray) and not value.isEmpty() else None

    def set_state(self, key: str, value: QByteArray) -> None:
        """Save a widget state."""
        if not self.read_only:
            self._settings.setValue(f"window/{key}", value)

    def sync(self) -> None:
        """Write to disk now."""
        if not self.read_only:
            self._settings.sync()
