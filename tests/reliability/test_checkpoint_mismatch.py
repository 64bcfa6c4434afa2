"""--checkpoint_path / --load with a config that does not fit the file: one line saying what differs, exit 2."""

import pytest

from conftest import REPO, fashion_config, write_tiny_fashion_mnist
from rupq.main import main

# One pytest-xdist worker runs this module: its tests share a trained model (a module fixture).
pytestmark = pytest.mark.xdist_group(__name__)

QUICKSTART_RUPQ = REPO / "rupq/examples/quickstart/w4a4_rupq.yaml"
TINY = ["dataset.batch_size=32", "dataset.num_workers=0"]


def run(capsys, *arguments):
    """``rupq train ARGUMENTS`` in this process: (exit status, last line of stderr)."""
    try:
        main([str(a) for a in arguments])
        status = 0
    except SystemExit as exit:
        status = exit.code
    lines = capsys.readouterr().err.strip().splitlines()
    return status, lines[-1] if lines else ""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """An FP run and a w4a4 RUPQ run from it (one epoch each, once for this file): the FP config and both folders."""
    folder = tmp_path_factory.mktemp("trained")
    fashion = write_tiny_fashion_mnist(folder / "fashion")
    (folder / "datasets_info.yaml").write_text(f"fashion_mnist: {fashion}\n")
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("RUPQ_DATASETS_INFO", str(folder / "datasets_info.yaml"))
        fp_config = fashion_config(folder / "fp.yaml", fashion)
        main(["--config", str(fp_config), "--logdir", str(folder / "fp"), "--set", *TINY])
        fp = folder / "fp" / "version_0"
        main(["--config", str(QUICKSTART_RUPQ), "--logdir", str(folder / "q"), "--load", str(fp / "model.ckpt"),
              "--set", *TINY])
        yield fp_config, fp, folder / "q" / "version_0"


def test_resume_with_another_architecture(trained, capsys, tmp_path):
    fp_config, fp, _ = trained
    status, line = run(capsys, "--config", fp_config, "--logdir", tmp_path / "r", "--checkpoint_path",
                       fp / "checkpoints/last.ckpt", "--set", "task.epochs=2", "task.model_kwargs={widths: [8, 8]}", *TINY)
    assert status == 2
    assert line == (f"error: {fp / 'checkpoints/last.ckpt'} holds small_resnet(blocks=[1, 1], widths=[4, 8]) "
                    "but the config builds small_resnet(widths=[8, 8])")


def test_resume_a_full_precision_run_with_a_quantized_config(trained, capsys, tmp_path):
    _, fp, _ = trained
    status, line = run(capsys, "--config", QUICKSTART_RUPQ, "--logdir", tmp_path / "r", "--checkpoint_path",
                       fp / "checkpoints/last.ckpt", "--set", "task.epochs=2", *TINY)
    assert status == 2 and "holds a full-precision model but the config quantizes the model" in line


def test_load_a_quantized_model_into_a_full_precision_config(trained, capsys, tmp_path):
    fp_config, _, quantized = trained
    fp_without_model = tmp_path / "fp_load.yaml"
    fp_without_model.write_text(fp_config.read_text().split("  model_arch:")[0])
    status, line = run(capsys, "--config", fp_without_model, "--logdir", tmp_path / "r", "--load",
                       quantized / "model.ckpt", "--set", *TINY)
    assert status == 2 and "holds a quantized model; its config needs the model_parser that quantized it" in line


def test_load_a_quantized_model_with_other_bit_widths(trained, capsys, tmp_path):
    _, _, quantized = trained
    status, line = run(capsys, "--config", QUICKSTART_RUPQ, "--logdir", tmp_path / "r", "--load",
                       quantized / "model.ckpt", "--set", "model_parser.weight_bit_width.default=3", *TINY)
    assert status == 2
    assert "does not fit the config's model_parser: " in line
    assert "has bit_width 4 in the checkpoint but 3 in the config (and " in line


def test_resume_with_another_bound_gradient(trained, capsys, tmp_path):
    """μ_b changes only gradients, so the state dict fits either way: the saved settings tell."""
    _, _, quantized = trained
    status, line = run(capsys, "--config", QUICKSTART_RUPQ, "--logdir", tmp_path / "r", "--checkpoint_path",
                       quantized / "checkpoints/last.ckpt", "--set", "task.epochs=2",
                       "model_parser.wrappers.Conv2d.quantizer.input_quantizer.bound_gradient=0.5", *TINY)
    assert status == 2
    assert "does not fit the config's model_parser: " in line
    assert "has bound_gradient 1.0 in the checkpoint but 0.5 in the config (and " in line


def test_checkpoints_saved_before_bound_gradient_are_not_compared_on_it():
    from rupq.tools.training.task import settings_difference

    before = {"conv1.input": {"type": "StepOffsetQuantizer", "bit_width": 4, "half_wave": True}}
    built = {"conv1.input": {**before["conv1.input"], "bound_gradient": 0.5}}
    assert settings_difference(before, built) is None
    assert settings_difference({"conv1.input": {**built["conv1.input"], "bound_gradient": 1.0}}, built) == (
        "conv1.input has bound_gradient 1.0 in the checkpoint but 0.5 in the config"
    )


@pytest.mark.parametrize("overrides, message", [
    (["optimizers={adam: {name: Adam, params: {lr: 0.1}}}"],
     "the checkpoint's optimizers are weight_optimizer; the config's are adam"),
    (["optimizers.weight_optimizer.name=Adam", "optimizers.weight_optimizer.params={lr: 0.1}"],
     "optimizer 'weight_optimizer' is SGD in the checkpoint but Adam in the config"),
    (["optimizers.weight_optimizer.scheduler=null"], "optimizer 'weight_optimizer' has a scheduler only in the checkpoint"),
])
def test_resume_with_other_optimizers(trained, capsys, tmp_path, overrides, message):
    fp_config, fp, _ = trained
    status, line = run(capsys, "--config", fp_config, "--logdir", tmp_path / "r", "--checkpoint_path",
                       fp / "checkpoints/last.ckpt", "--set", "task.epochs=2", *overrides, *TINY)
    assert status == 2 and line == f"error: {fp / 'checkpoints/last.ckpt'}: {message}"


def test_resume_with_other_parameter_groups(trained, capsys, tmp_path):
    _, _, quantized = trained
    status, line = run(capsys, "--config", QUICKSTART_RUPQ, "--logdir", tmp_path / "r", "--checkpoint_path",
                       quantized / "checkpoints/last.ckpt",
                       "--set", "task.epochs=2", "optimizers.weight_optimizer.model_params_type=all", *TINY)
    assert status == 2
    assert "optimizer 'weight_optimizer' trained" in line and "parameter tensors in the checkpoint but gets" in line
