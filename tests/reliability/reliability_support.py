"""Helpers of the reliability tests: config line numbers, one-line errors (and, from conftest,
the command line run in this process)."""

import subprocess

from conftest import ONE_THREAD, run_main  # noqa: F401  (used by the reliability tests)


def line_of(text: str, needle: str, occurrence: int = 1) -> int:
    """1-based number of the line holding the ``occurrence``-th ``needle``."""
    seen = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if needle in line:
            seen += 1
            if seen == occurrence:
                return number
    raise AssertionError(f"{needle!r} not in the config")


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """The single ``error: …`` line of a failed run (asserting exit status 2 and no traceback)."""
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    return errors[0]
