"""Helpers of the reliability tests: the command line run in this process, config line numbers."""

import contextlib
import io
import subprocess

import torch

# Tiny models on a shared 2-core machine: one intra-op thread per process. Two threads per
# process next to DataLoader workers and other jobs make each step up to 100× slower.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def run_main(*args) -> subprocess.CompletedProcess:
    """``rupq.main.main(ARGS)`` in this process: the command line's own argument parsing, error
    printing and exit status, without the ~3 s of a fresh interpreter. Anything but SystemExit
    (an exception main lets escape) fails the calling test with its traceback."""
    from rupq.main import main

    stdout, stderr = io.StringIO(), io.StringIO()
    code, threads = 0, torch.get_num_threads()
    torch.set_num_threads(1)  # as ONE_THREAD does for subprocesses
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            main([str(arg) for arg in args])
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else 1
        finally:
            torch.set_num_threads(threads)
    return subprocess.CompletedProcess(["rupq", *map(str, args)], code, stdout.getvalue(), stderr.getvalue())


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
