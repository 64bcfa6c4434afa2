"""``!ObjectDetectionTrainingLoop`` and a detection run end to end through the command line."""

import json

import pytest
import torch
from conftest import write_config
from detection_data import one_thread, write_tiny_coco  # noqa: F401 (fixture)

from rupq import main
from rupq.dataloaders.coco import COCODataloader
from rupq.models import create_model
from rupq.tools.losses import YOLOLoss
from rupq.tools.training import ObjectDetectionTrainingLoop

pytestmark = pytest.mark.usefixtures("one_thread")


def test_batches_unpack_to_images_and_a_targets_dict(tmp_path):
    root = write_tiny_coco(tmp_path / "coco")
    dataset = COCODataloader(batch_size=2, image_size=64, multiscale=False, num_workers=0, root=str(root))
    loop = ObjectDetectionTrainingLoop(dataset)
    assert isinstance(loop.loss, YOLOLoss) and not loop.has_validation_loss
    batch = next(iter(dataset.val_dataloader()))
    images, targets = loop.unpack_batch(batch)
    assert images.shape == (2, 3, 64, 64)
    assert set(targets) == {"boxes", "original_sizes", "input_size", "paths"} and targets["input_size"] == 64

    model = create_model("yolo_v3_tiny_demo", num_classes=3)
    output = loop.training_step(model.train(), next(iter(dataset.train_dataloader())))
    assert output.loss.ndim == 0 and output.loss.requires_grad
    with torch.no_grad():
        output = loop.validation_step(model.eval(), batch)
    assert output.loss is None and output.preds.shape[:2] == (2, 3 * (2 * 2 + 4 * 4))


def test_training_metrics_are_refused(tmp_path):
    dataset = COCODataloader(batch_size=2, root=str(tmp_path))
    with pytest.raises(ValueError, match="no per-step training metrics"):
        ObjectDetectionTrainingLoop(dataset, train_metrics={"x": object()})


DETECTION_CONFIG = """
dataset: &dataset !COCODataloader
  batch_size: 4
  image_size: 64
  multiscale: false
  num_workers: 0
  root: {root}
optimizers: &optimizers
  weight_optimizer:
    name: Adam
    model_params_type: {params}
    params: {{lr: 0.001}}
{quant_optimizer}
training_loop: &training_loop !ObjectDetectionTrainingLoop
  dataset: *dataset
  loss: !YOLOLoss
  print_calibration: false
task: !Task
  training_loop: *training_loop
  epochs: 1
  optimizers: *optimizers
  check_val_every_n_epochs: 1000  # never during training: the callback validates at the end
  model_saver: {{save_last: true}}
{model}
  callbacks:
    - !ValidateCOCOCallback
      map: !MAP {{img_size: 96, iou_thres: 0.5, conf_thres: 0.001, nms_thres: 0.5}}
"""
FP_MODEL = """  model_arch: yolo_v3_tiny_demo
  model_kwargs: {num_classes: 3}"""
QUANT_OPTIMIZER = """  quant_optimizer:
    name: Adam
    model_params_type: quant
    params: {lr: 0.001}"""
QUANT_MODEL = """  model_parser: !ModelParser
    wrappers:
      Conv2d: !QuantConv2d
        quantizer: !ModuleQuantizer
          input_quantizer: !StepOffsetQuantizer
            initializer: !MinErrorInitializer {n_iters: 20}
            transformation: !Standardization {momentum: 0.9999, trainable: false}
          weight_quantizer: !StepQuantizer
            initializer: !MinErrorInitializer {n_iters: 20}
            transformation: !Standardization {dim: [1, 2, 3], trainable: true}
            per_channel: true
    input_bit_width: {default: 4, exceptions: {module_list.0.conv_0: 8}}
    weight_bit_width: {default: 4, exceptions: {module_list.0.conv_0: 8}}
    half_wave: {default: false, exceptions: {module_list.0.conv_0: true}}"""


def test_detection_runs_report_the_final_map(tmp_path, capsys):
    """FP, then w4a4 RUPQ from its model.ckpt (as docs/detection.md does), through the command line's run()."""
    root = write_tiny_coco(tmp_path / "coco")
    fp = write_config(tmp_path / "fp.yaml", DETECTION_CONFIG.format(
        root=root, params="all", quant_optimizer="", model=FP_MODEL))
    version = main.run(main.parse_args(["--config", str(fp), "--logdir", str(tmp_path / "fp")]))
    output = "".join(capsys.readouterr())
    assert "validating the final model" in output and "Average Precision  (AP) @[ IoU=0.50:0.95" in output
    results = json.loads((version / "results.json").read_text())
    assert 0 <= results["val_mAP50"] <= 1 and 0 <= results["val_mAP"] <= results["val_mAP50"] + 1e-9
    assert "train_target_loss" in results and "val_target_loss" not in results

    quantized = write_config(tmp_path / "w4a4.yaml", DETECTION_CONFIG.format(
        root=root, params="weight", quant_optimizer=QUANT_OPTIMIZER, model=QUANT_MODEL))
    version = main.run(main.parse_args([
        "--config", str(quantized), "--logdir", str(tmp_path / "w4a4"), "--load", str(version / "model.ckpt")
    ]))
    results = json.loads((version / "results.json").read_text())
    assert 0 <= results["val_mAP50"] <= 1 and "val_mAP" in results
    checkpoint = torch.load(version / "model.ckpt", weights_only=True)
    assert checkpoint["quantized"] and "module_list.0.conv_0.module.weight" in checkpoint["state_dict"]
