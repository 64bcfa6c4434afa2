"""Training runs with the Task's ``compile`` and ``precision`` options (``--compile``, ``--precision``).

A compiled run must keep the guarantees of an eager one: a resumed run equals the uninterrupted
one bit for bit on the CPU. bf16 runs under autocast with the quantizers in float32.
"""

import json

import torch
from conftest import REPO, edit_shipped, run_cli, run_main
from test_quantizer_robustness import quantized_config

from rupq.tools.utils.checkpoint import load_checkpoint

CALLBACK_MAIN = REPO / "tests" / "tools" / "training" / "callback_main.py"


def final_state(version_dir):
    return load_checkpoint(version_dir / "checkpoints" / "last.ckpt")["model"]["state_dict"]


def test_compiled_quantized_run_resumes_to_the_uninterrupted_run(tmp_path, tiny_fashion_mnist):
    """Two compiled runs: two epochs straight, keeping the checkpoint written after epoch 1
    (callback_main.py's ``!CopyCheckpointAtEpochStart``), and a fresh process resumed from it."""
    _, text = quantized_config(tmp_path, tiny_fashion_mnist, "w4a4_rupq")
    text = edit_shipped(text, "  epochs: 1\n", "  epochs: 2\n")
    # One stage of the small ResNet (stem, a residual block, classifier): a third less to compile.
    text = edit_shipped(text, "{widths: [4, 8], blocks: [1, 1]}", "{widths: [4], blocks: [1]}")
    config = tmp_path / "two_epochs.yaml"
    config.write_text(text + "  callbacks: [!CopyCheckpointAtEpochStart {epoch: 2}]\n")
    straight = run_cli("--config", config, "--logdir", tmp_path / "straight", "--compile", script=CALLBACK_MAIN)
    assert straight.returncode == 0, straight.stderr[-3000:]
    assert "compiling the model with torch.compile" in straight.stdout
    resumed = run_cli("--config", config, "--logdir", tmp_path / "resumed", "--compile",
                      "--checkpoint_path", tmp_path / "straight/version_0/checkpoints/before_epoch_2.ckpt",
                      script=CALLBACK_MAIN)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming at epoch 2, iteration 1" in resumed.stdout
    expected, actual = final_state(tmp_path / "straight/version_0"), final_state(tmp_path / "resumed/version_0")
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name


def test_bf16_quantized_run_follows_the_float32_run(tmp_path, tiny_fashion_mnist):
    """Same losses to bf16's precision, and not the same run: autocast was on."""
    config, _ = quantized_config(tmp_path, tiny_fashion_mnist, "w4a4_rupq")
    logged = {}
    for precision in ("fp32", "bf16"):
        result = run_main("--config", config, "--logdir", tmp_path / precision, "--precision", precision)
        assert result.returncode == 0, result.stderr[-3000:]
        logged[precision] = json.loads((tmp_path / precision / "version_0/results.json").read_text())
    fp32, bf16 = logged["fp32"], logged["bf16"]
    # Measured: train loss 2.3437 (fp32) vs 2.3416 (bf16) over 3 epochs; bf16 keeps 8 bits of mantissa.
    for key in ("train_target_loss", "val_target_loss"):
        assert abs(bf16[key] - fp32[key]) <= 0.02 * fp32[key], key
    steps = [key for key in fp32 if key.endswith("weight_quantizer/step")]
    assert any(bf16[key] != fp32[key] for key in steps)
