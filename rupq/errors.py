"""User-facing errors.

Anything the user can fix (a config typo, a missing dataset folder, a foreign checkpoint) is
raised as a :class:`RupqError`. ``main.py`` prints it as one line and exits with status 2;
every other exception is a bug and keeps its traceback.
"""


WORKER_PREFIX = "Caught "
WORKER_TRACEBACK = "\nOriginal Traceback"


def _one_line(message: str) -> tuple[str, str | None]:
    """``(message, worker traceback or None)``.

    An error raised inside a DataLoader worker reaches the main process as the same class built
    from ``"Caught DataError in DataLoader worker process 0.\\nOriginal Traceback ..."``; its
    last line holds the original message, which is what the user needs to read.
    """
    worker_traceback = None
    if message.startswith(WORKER_PREFIX) and WORKER_TRACEBACK in message:
        worker_traceback = message
        last = message.rstrip().splitlines()[-1]  # "rupq.errors.DataError: <original message>"
        message = last.split(": ", 1)[1] if ": " in last else last
    return " ".join(line.strip() for line in message.splitlines() if line.strip()), worker_traceback


class RupqError(Exception):
    """An error in the user's input, reported as one line."""

    def __init__(self, message: str, where: str | None = None):
        message, self.worker_traceback = _one_line(str(message))
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


class ExportError(RupqError):
    """A model or layer the exporter cannot express, or an export that does not match PyTorch."""


class TrainingInterrupted(Exception):
    """Raised after a resumable checkpoint was written because the run was asked to stop (SIGTERM,
    Ctrl-C): not an error, ``main.py`` prints it with status 130. Here, and not beside the trainer,
    so that the command line reports a missing config file before it imports torch."""

    def __init__(self, checkpoint):
        super().__init__(f"training interrupted; resume with --checkpoint_path {checkpoint}")
        self.checkpoint = checkpoint
