import os

import pytest
import torch

from rupq.errors import CheckpointError
from rupq.tools.utils.checkpoint import load_checkpoint, save_atomic


def test_atomic_save_replaces_and_leaves_no_temporaries(tmp_path):
    path = tmp_path / "model.ckpt"
    save_atomic({"format": "x", "w": torch.ones(3)}, path)
    save_atomic({"format": "x", "w": torch.zeros(3)}, path)
    assert torch.equal(load_checkpoint(path, "x")["w"], torch.zeros(3))
    assert os.listdir(tmp_path) == ["model.ckpt"]


def test_failed_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "model.ckpt"
    save_atomic({"format": "x", "w": torch.ones(3)}, path)

    class Unsavable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_atomic({"format": "x", "w": Unsavable()}, path)
    assert torch.equal(load_checkpoint(path, "x")["w"], torch.ones(3))
    assert os.listdir(tmp_path) == ["model.ckpt"]


def test_wrong_format_and_garbage(tmp_path):
    path = tmp_path / "a.ckpt"
    torch.save({"format": "other"}, path)
    with pytest.raises(CheckpointError, match="is not a rupq-model-v1 checkpoint \\(found 'other'\\)"):
        load_checkpoint(path, "rupq-model-v1")
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=f"cannot read checkpoint {path}"):
        load_checkpoint(path)


def test_temporaries_of_a_killed_writer_are_cleaned_up_and_bytes_are_written_as_is(tmp_path):
    path = tmp_path / "results.json"
    (tmp_path / ".results.json.abc123.tmp").write_bytes(b"half a file")
    save_atomic(b'{"a": 1}\n', path)
    assert path.read_bytes() == b'{"a": 1}\n'
    assert os.listdir(tmp_path) == ["results.json"]
