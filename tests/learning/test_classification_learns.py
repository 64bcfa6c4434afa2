"""Classification learns: the shipped quickstart recipes, on a tiny learnable task made here,
reach an accuracy far above chance in full precision, and LSQ+ and RUPQ 4-bit QAT started from
that model stay close to it.

The task (``write_glyph_fashion_mnist``): 10 classes, each a 4×4 glyph stamped at random places
on noise, 480 training and 200 test images in the Fashion-MNIST files. Chance is 10 %. Every run
goes through the command line's ``main`` in this process, as ``run.py`` starts them.
"""

import json

import pytest

from conftest import REPO, edit_shipped, run_main, write_config, write_glyph_fashion_mnist

# One pytest-xdist worker runs this module: its tests share a trained model (a module fixture).
pytestmark = pytest.mark.xdist_group(__name__)

QUICKSTART = REPO / "rupq" / "examples" / "quickstart"
TRAIN_IMAGES, TEST_IMAGES, BATCH = 480, 200, 32
ITERATIONS_PER_EPOCH = TRAIN_IMAGES // BATCH
FP_EPOCHS = 8

# Thresholds from measured runs (torch 2.14.1, one thread; data seeds 0, 1, 2 and 3), each with
# its margin:
# - FP test accuracy was 100, 100, 99 and 100 %: at least 90 % (9 points below the lowest;
#   chance is 10 %, where a run whose labels no longer match its images stays);
FP_MIN_ACCURACY = 90.0
# - w4a4 QAT, one epoch from that model: LSQ+ 100, 99.5, 98, 100 %, RUPQ 100, 100, 98.5, 100 %,
#   at most 1 point below its FP model: at most 5 points below it.
QAT_MAX_DROP = 5.0


def fp_config(folder, data):
    text = (QUICKSTART / "fp.yaml").read_text()
    text = edit_shipped(text, "  batch_size: 128\n", f"  batch_size: {BATCH}\n  root: {data}\n")
    text = edit_shipped(text, "total_steps: 1876", f"total_steps: {ITERATIONS_PER_EPOCH * FP_EPOCHS}")
    text = edit_shipped(text, "  epochs: 4\n", f"  epochs: {FP_EPOCHS}\n")
    text = edit_shipped(text, "  model_arch: small_resnet\n",
                        "  model_arch: small_resnet\n  model_kwargs: {widths: [8, 16], blocks: [1, 1]}\n")
    return write_config(folder / "fp.yaml", text)


def qat_config(folder, recipe: str, data):
    text = (QUICKSTART / f"w4a4_{recipe}.yaml").read_text()
    text = edit_shipped(text, "  batch_size: 128\n", f"  batch_size: {BATCH}\n  root: {data}\n")
    text = edit_shipped(text, "T_max: 469", f"T_max: {ITERATIONS_PER_EPOCH}")
    return write_config(folder / f"{recipe}.yaml", text)


def best_accuracy(logdir) -> float:
    return json.loads((logdir / "version_0" / "results.json").read_text())["best_val_accuracy"]


@pytest.fixture(scope="module")
def fp_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("classification")
    data = write_glyph_fashion_mnist(folder / "glyphs", TRAIN_IMAGES, TEST_IMAGES)
    result = run_main("--config", fp_config(folder, data), "--logdir", folder / "fp")
    assert result.returncode == 0, result.stderr[-3000:]
    return folder, data, best_accuracy(folder / "fp")


def test_full_precision_training_learns_far_above_chance(fp_run):
    _, _, accuracy = fp_run
    assert accuracy >= FP_MIN_ACCURACY, f"FP test accuracy {accuracy:.1f} % (chance 10 %)"


@pytest.mark.parametrize("recipe", ["lsqplus", "rupq"])
def test_4bit_qat_from_the_trained_model_stays_close_to_it(fp_run, recipe):
    folder, data, fp_accuracy = fp_run
    result = run_main("--config", qat_config(folder, recipe, data), "--logdir", folder / recipe,
                      "--load", folder / "fp/version_0/model.ckpt")
    assert result.returncode == 0, result.stderr[-3000:]
    accuracy = best_accuracy(folder / recipe)
    assert accuracy >= fp_accuracy - QAT_MAX_DROP, f"{recipe} w4a4 {accuracy:.1f} % against FP {fp_accuracy:.1f} %"
    assert accuracy >= FP_MIN_ACCURACY - QAT_MAX_DROP
