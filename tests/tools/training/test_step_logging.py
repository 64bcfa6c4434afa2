"""Step-level TensorBoard curves (``log_every_n_steps``), the config in the text tab, and no matplotlib on import."""

import subprocess
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import REPO
from rupq.main import main
from rupq.models import create_model
from rupq.tools.training.task import model_checkpoint
from rupq.tools.utils.checkpoint import save_atomic

RUPQ_CONFIG = REPO / "rupq/examples/quickstart/w4a4_rupq.yaml"


def test_quantized_run_logs_loss_lr_and_quantizer_steps_every_n_steps(tmp_path, tiny_fashion_mnist, datasets_info):
    datasets_info(fashion_mnist=tiny_fashion_mnist)
    checkpoint = tmp_path / "fp.ckpt"
    save_atomic(model_checkpoint(create_model("small_resnet", widths=[4, 8], blocks=[1, 1])), checkpoint)
    # 64 training images in batches of 16: 4 steps, logged after steps 2 and 4.
    main(["--config", str(RUPQ_CONFIG), "--logdir", str(tmp_path / "logs"), "--load", str(checkpoint),
          "--set", "dataset.batch_size=16", "dataset.num_workers=0", "task.log_every_n_steps=2"])
    events = EventAccumulator(str(tmp_path / "logs" / "version_0"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    scalars = events.Tags()["scalars"]

    def steps(tag):
        return [event.step for event in events.Scalars(tag)]

    assert steps("step/train_target_loss") == [2, 4]
    assert steps("step/train_accuracy") == [2, 4]
    learning_rates = [tag for tag in scalars if tag.startswith("step/lr/")]
    assert len(learning_rates) == 3 and all(steps(tag) == [2, 4] for tag in learning_rates)
    quantizer_steps = [tag for tag in scalars if tag.startswith("step/quant_vars/") and tag.endswith("/step")]
    assert quantizer_steps and all(steps(tag) == [2, 4] for tag in quantizer_steps)
    first = events.Scalars(quantizer_steps[0])
    assert first[0].value != first[1].value  # the quantizer step moved between the two logs
    # Epoch summaries stay, one point per epoch.
    assert steps("train_target_loss") == [1] and steps("val_accuracy") == [1]
    # The effective config, overrides applied, in the text tab.
    (config_text,) = [tag for tag in events.Tags()["tensors"] if tag.startswith("config")]
    text = events.Tensors(config_text)[0].tensor_proto.string_val[0].decode()
    assert "--set task.log_every_n_steps=2" in text and "log_every_n_steps: 2" in text


def test_log_every_n_steps_must_be_positive(tmp_path, capsys):
    try:
        main(["--config", str(RUPQ_CONFIG), "--logdir", str(tmp_path), "--set", "task.log_every_n_steps=0"])
    except SystemExit as exit:
        assert exit.code == 2
    assert "log_every_n_steps must be at least 1, got 0" in capsys.readouterr().err


def test_loading_a_config_leaves_matplotlib_alone():
    code = ("import sys; from rupq.config import load_config; from rupq.tags import tag_registry; tag_registry(); "
            f"load_config({str(RUPQ_CONFIG)!r}); print(any(m.startswith('matplotlib') for m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "False", result.stderr
