"""Checkpoints never run code: every ``torch.load`` of the framework passes ``weights_only=True``,
and a checkpoint crafted to run code when unpickled is refused by ``--load`` and by
``--checkpoint_path`` with a clear one-line message."""

import ast
import collections
import os
import pathlib

import pytest
import torch

from conftest import REPO, fashion_config
from reliability_support import one_error_line, run_main


class RunsCode:
    """Unpickling this calls ``os.system`` (what a malicious checkpoint would do)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def crafted_training_checkpoint(path, marker):
    """A training checkpoint in the right format, with the payload hidden among the RNG states."""
    torch.save({"format": "rupq-training-v1", "model": {}, "optimizers": {}, "schedulers": {}, "epoch": 0,
                "batch": 1, "global_step": 1, "rng": {"torch": torch.get_rng_state(), "evil": RunsCode(marker)},
                "callbacks": [], "logged": {}}, path)
    return path


def test_checkpoint_path_with_pickled_code_is_refused(tmp_path, tiny_fashion_mnist):
    marker = tmp_path / "pwned"
    evil = crafted_training_checkpoint(tmp_path / "last.ckpt", marker)
    config = fashion_config(tmp_path / "cfg.yaml", tiny_fashion_mnist)
    line = one_error_line(run_main("--config", config, "--logdir", tmp_path / "logs", "--checkpoint_path", evil))
    assert line.startswith(f"error: refusing to load {evil}: it holds Python objects other than tensors and plain "
                           "data, and unpickling them could run code (")
    assert "posix.system" in line or "os.system" in line  # names what it would have called
    assert not marker.exists()
    torch.load(evil, weights_only=False)  # the file really runs code when unpickled the unsafe way
    assert marker.exists()


def test_pickled_class_instance_is_refused_too(tmp_path, tiny_fashion_mnist):
    """Not only function calls: any object pickled by reference to its class is refused."""
    evil = tmp_path / "model.ckpt"
    torch.save({"format": "rupq-model-v1", "arch": {"name": "small_resnet", "kwargs": {}}, "quantized": False,
                "state_dict": collections.OrderedDict(), "extra": pathlib.PurePosixPath("/etc")}, evil)
    config = fashion_config(tmp_path / "cfg.yaml", tiny_fashion_mnist, with_model=False)
    line = one_error_line(run_main("--config", config, "--logdir", tmp_path / "logs", "--load", evil))
    assert line.startswith(f"error: refusing to load {evil}: it holds Python objects other than tensors")
    assert "pathlib.PurePosixPath" in line


@pytest.mark.parametrize("content, reason", [
    (b"", "cannot read checkpoint"),
    (b"PK\x03\x04 not really a zip", "cannot read checkpoint"),
])
def test_corrupt_checkpoint_path_is_one_line(tmp_path, tiny_fashion_mnist, content, reason):
    bad = tmp_path / "last.ckpt"
    bad.write_bytes(content)
    config = fashion_config(tmp_path / "cfg.yaml", tiny_fashion_mnist)
    line = one_error_line(run_main("--config", config, "--logdir", tmp_path / "logs", "--checkpoint_path", bad))
    assert line.startswith(f"error: {reason} {bad}"), line


def calls_in_framework(name: str):
    """``(file, call)`` for every ``torch.<name>(…)`` call in rupq/."""
    for path in sorted((REPO / "rupq").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == name
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"):
                yield path, node


def test_every_torch_load_is_weights_only():
    calls = list(calls_in_framework("load"))
    assert calls, "no torch.load found: the scan is broken"
    for path, call in calls:
        flags = {k.arg: k.value for k in call.keywords}
        assert isinstance(flags.get("weights_only"), ast.Constant) and flags["weights_only"].value is True, (
            f"{path.relative_to(REPO)}:{call.lineno}: torch.load without weights_only=True")


def test_every_checkpoint_write_is_atomic():
    """``torch.save`` is only called by ``save_atomic`` (temporary file, flush, fsync, rename)."""
    calls = [(path.relative_to(REPO).as_posix(), call.lineno) for path, call in calls_in_framework("save")]
    assert calls and all(path == "rupq/tools/utils/checkpoint.py" for path, _ in calls), calls
    source = (REPO / "rupq/tools/utils/checkpoint.py").read_text()
    function = next(node for node in ast.walk(ast.parse(source))
                    if isinstance(node, ast.FunctionDef) and node.name == "save_atomic")
    assert all(function.lineno <= line <= function.end_lineno for _, line in calls)
