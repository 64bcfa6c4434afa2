"""Comparing what a run leaves behind: checkpoints (nested dicts of tensors and plain data),
``results.json`` and TensorBoard scalars, exactly, with the path of the first difference."""

import json
import math
from pathlib import Path

import torch

# Wall-clock time of a run: the one logged value that two identical runs do not share.
VARYING_RESULTS = ("time_s",)


def assert_identical(expected, actual, path: str = "") -> None:
    """``expected`` and ``actual`` are equal bit for bit: same keys, same tensor dtypes, shapes
    and values (``torch.equal``), same plain values (NaN equal to NaN)."""
    where = path or "<root>"
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor), f"{where}: tensor expected, got {type(actual).__name__}"
        assert (expected.dtype, expected.shape) == (actual.dtype, actual.shape), (
            f"{where}: {expected.dtype}{list(expected.shape)} != {actual.dtype}{list(actual.shape)}")
        assert torch.equal(expected, actual), f"{where}: values differ (max |Δ| {_max_difference(expected, actual)})"
    elif isinstance(expected, dict):
        assert isinstance(actual, dict), f"{where}: dict expected, got {type(actual).__name__}"
        assert sorted(map(str, expected)) == sorted(map(str, actual)), f"{where}: keys {sorted(expected)} != {sorted(actual)}"
        for key in expected:
            assert_identical(expected[key], actual[key], f"{path}.{key}" if path else str(key))
    elif isinstance(expected, (list, tuple)):
        assert isinstance(actual, (list, tuple)) and len(expected) == len(actual), f"{where}: {expected!r} != {actual!r}"
        for index, (a, b) in enumerate(zip(expected, actual)):
            assert_identical(a, b, f"{path}[{index}]")
    elif isinstance(expected, float) and math.isnan(expected):
        assert isinstance(actual, float) and math.isnan(actual), f"{where}: nan != {actual!r}"
    else:
        assert expected == actual, f"{where}: {expected!r} != {actual!r}"


def _max_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.is_floating_point():
        return (a.double() - b.double()).abs().max().item()
    return (a.long() - b.long()).abs().max().item()


def results(version_dir: Path) -> dict:
    """``results.json`` of a finished run, without the values that differ between identical runs."""
    logged = json.loads((Path(version_dir) / "results.json").read_text())
    return {name: value for name, value in logged.items() if name not in VARYING_RESULTS}


def tensorboard_scalars(*version_dirs: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar the runs wrote to TensorBoard, ``{tag: [(step, value), …]}`` in step order:
    an interrupted run and its resumed run together show what one uninterrupted run shows."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: dict[str, list[tuple[int, float]]] = {}
    for version_dir in version_dirs:
        events = EventAccumulator(str(version_dir), size_guidance={"scalars": 0})
        events.Reload()
        for tag in events.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((event.step, event.value) for event in events.Scalars(tag))
    return {tag: sorted(values) for tag, values in scalars.items()}
