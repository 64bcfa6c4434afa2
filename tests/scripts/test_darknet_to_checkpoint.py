"""scripts/darknet_to_checkpoint.py: a Darknet .weights file becomes a model.ckpt that --load reads."""

import importlib.util

import pytest
import torch
from conftest import REPO

from rupq.dataloaders import COCODataloader
from rupq.models import create_model
from rupq.models.yolo import save_darknet_weights
from rupq.tools.training import ObjectDetectionTrainingLoop
from rupq.tools.training.task import RunContext, Task
from rupq.tools.utils.checkpoint import MODEL_FORMAT, load_checkpoint

spec = importlib.util.spec_from_file_location("darknet_to_checkpoint", REPO / "scripts" / "darknet_to_checkpoint.py")
script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(script)


def test_weights_become_a_loadable_checkpoint(tmp_path):
    source = create_model("yolo_v3", cfg="yolov3-tiny-demo", num_classes=2)
    with torch.no_grad():
        for parameter in source.parameters():
            parameter.uniform_(-1, 1)
    save_darknet_weights(source, tmp_path / "tiny.weights")
    script.main(["--weights", str(tmp_path / "tiny.weights"), "--out", str(tmp_path / "model.ckpt"),
                 "--cfg", "yolov3-tiny-demo", "--num_classes", "2"])
    saved = load_checkpoint(tmp_path / "model.ckpt", MODEL_FORMAT)
    assert saved["arch"] == {"name": "yolo_v3", "kwargs": {"cfg": "yolov3-tiny-demo", "num_classes": 2}}
    assert not saved["quantized"]
    task = Task(ObjectDetectionTrainingLoop(COCODataloader(batch_size=1, root=str(tmp_path))), epochs=1)
    model = task.build_model(RunContext(version_dir=None, device=torch.device("cpu"), load=str(tmp_path / "model.ckpt")))
    for (name, a), b in zip(source.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name


def test_wrong_cfg_is_a_one_line_error(tmp_path, capsys):
    save_darknet_weights(create_model("yolo_v3_tiny_demo"), tmp_path / "tiny.weights")
    with pytest.raises(SystemExit) as exit:
        script.main(["--weights", str(tmp_path / "tiny.weights"), "--out", str(tmp_path / "model.ckpt")])
    assert exit.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "needs 62001757" in error  # the size of the published yolov3.weights and "\n" not in error
    assert not (tmp_path / "model.ckpt").exists()
