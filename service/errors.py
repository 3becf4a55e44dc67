"""Domain exceptions shared by several modules; edges turn them into 4xx answers."""

from __future__ import annotations


class InvalidInput(Exception):
    """Some fields were refused; ``errors`` maps each field name to a message."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


class NotFound(Exception):
    """The thing asked for does not exist (or no longer does)."""
