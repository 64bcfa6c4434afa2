"""User-facing errors.

Anything the user can fix (a config typo, a missing dataset folder, a foreign checkpoint) is
raised as a :class:`RupqError`. ``main.py`` prints it as one line and exits with status 2;
every other exception is a bug and keeps its traceback.
"""


class RupqError(Exception):
    """An error in the user's input, reported as one line."""

    def __init__(self, message: str, where: str | None = None):
        super().__init__(message)
        self.message = message
        self.where = where

    def at(self, where: str | None) -> "RupqError":
        """Attach a location (``file:line``) unless one is already known."""
        if self.where is None and where:
            self.where = where
        return self

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" if self.where else self.message


class ConfigError(RupqError):
    """A config file that cannot be turned into objects."""


class DataError(RupqError):
    """A dataset that is missing, empty or malformed."""


class CheckpointError(RupqError):
    """A checkpoint that cannot be read."""
