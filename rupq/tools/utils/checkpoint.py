"""Checkpoint files: written atomically, read without unpickling code.

``model.ckpt`` holds ``{"format", "arch", "quantized", "quantizers", "state_dict"}`` (``quantizers``:
each quantizer's type, bit width and half-wave flag, to tell a config that does not fit) where ``arch`` is the
architecture name and arguments (:func:`rupq.models.architecture_of`). The training-state
checkpoint adds optimizers, schedulers, counters and RNG states. Both contain tensors and plain
Python data only and are read with ``torch.load(..., weights_only=True)``.
"""

import os
import pickle
import tempfile
from pathlib import Path

import torch

from rupq.errors import CheckpointError

MODEL_FORMAT = "rupq-model-v1"
TRAINING_FORMAT = "rupq-training-v1"


def save_atomic(obj, path) -> None:
    """Write ``obj`` (``torch.save``; raw ``bytes`` as they are) to a temporary file beside
    ``path``, flush it to disk, then rename it over ``path``.

    A crash at any moment leaves either the previous file or the new one, never a torn one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a writer killed mid-write
        stale.unlink(missing_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            if isinstance(obj, bytes):
                stream.write(obj)
            else:
                torch.save(obj, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def load_checkpoint(path, expected_format: str | None = None) -> dict:
    """Read a checkpoint with ``weights_only=True``; refuse anything that would run code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        blocked = next((line for line in lines if "GLOBAL" in line or "Unsupported global" in line), None)
        if blocked:
            raise CheckpointError(
                f"refusing to load {path}: it holds Python objects other than tensors and plain data, "
                f"and unpickling them could run code ({blocked})"
            ) from None
        reason = next((line for line in lines if line.startswith("Unsupported") or "invalid" in line), lines[-1])
        raise CheckpointError(f"cannot read checkpoint {path}: not a PyTorch checkpoint ({reason})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: {first}") from None
    if not isinstance(data, dict) or (expected_format and data.get("format") != expected_format):
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f"{path} is not a {expected_format} checkpoint (found {found!r})")
    return data
