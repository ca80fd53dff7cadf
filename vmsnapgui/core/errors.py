"""The one error type the user sees: a sentence they understand, and the detail behind it."""

from __future__ import annotations


class UserError(Exception):
    """An error whose ``message`` is one plain sentence fit to show a user.

    ``detail`` keeps the original technical text (for a details view and the log).
    """

    def __init__(self, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail

    def __str__(self) -> str:
        return self.message
