"""``--set KEY=VALUE``: overrides applied to the YAML before objects are built."""

import json
import tempfile
import warnings
from pathlib import Path

import pytest

from conftest import REPO, fashion_config, run_main
from rupq.config import load_config
from rupq.config_text import config_tree, config_value_text, effective_config_text
from rupq.errors import ConfigError
from rupq.tags import ConfigCaseWarning

RUPQ_W4A4 = REPO / "rupq/examples/quantized/classification/resnet18/w4a4_rupq.yaml"


def test_dotted_paths_and_yaml_values():
    config = load_config(RUPQ_W4A4, [
        "task.epochs=1", "dataset.batch_size=64", "model_parser.input_bit_width.default=3",
        "optimizers.weight_optimizer.params.lr=0.01", "optimizers.weight_optimizer.params.nesterov=true",
        "model_parser.weight_bit_width.exceptions={conv1: 8, fc: 6}",
    ])
    task = config["task"]
    assert task.epochs == 1 and task.training_loop.dataset.batch_size == 64
    assert task.optimizers["weight_optimizer"]["params"]["lr"] == 0.01
    assert task.optimizers["weight_optimizer"]["params"]["nesterov"] is True
    tree = config_tree(effective_path(RUPQ_W4A4, ["model_parser.input_bit_width.default=3",
                                                   "model_parser.weight_bit_width.exceptions={conv1: 8, fc: 6}"]))
    assert tree["model_parser"]["input_bit_width"]["default"] == 3
    assert tree["model_parser"]["weight_bit_width"]["exceptions"] == {"conv1": 8, "fc": 6}


def test_config_tree_with_overrides_is_the_tree_of_the_effective_config():
    overrides = ["model_parser.input_bit_width.default=3", "task.training_loop.dataset.batch_size=8",
                 "model_parser.wrappers.Conv2d.quantizer.input_quantizer.transformation="]
    tree = config_tree(RUPQ_W4A4, overrides)
    assert tree == config_tree(effective_path(RUPQ_W4A4, overrides))
    assert tree["model_parser"]["input_bit_width"]["default"] == 3
    assert tree["dataset"]["batch_size"] == 8 and tree["task"]["training_loop"]["dataset"] is tree["dataset"]


def effective_path(path, overrides):
    """The effective config written to a file, as a run writes version_N/config.yaml."""
    target = Path(tempfile.mkdtemp()) / "config.yaml"
    target.write_text(effective_config_text(path, overrides))
    return target


def test_a_path_through_an_anchor_changes_the_shared_object():
    # `dataset` is anchored (&dataset) and used by the training loop as *dataset.
    config = load_config(RUPQ_W4A4, ["task.training_loop.dataset.batch_size=8"])
    assert config["dataset"] is config["task"].training_loop.dataset
    assert config["dataset"].batch_size == 8
    # Replacing the whole anchored object replaces it wherever it is used.
    config = load_config(RUPQ_W4A4, ["dataset=!FashionMNISTDataloader {batch_size: 16}"])
    assert type(config["task"].training_loop.dataset).__name__ == "FashionMNISTDataloader"
    assert config["dataset"] is config["task"].training_loop.dataset


def test_new_arguments_of_tagged_objects_list_items_and_dotted_layer_names():
    config = load_config(RUPQ_W4A4, [
        "task.seed=3",  # not in the file, but an argument of !Task
        "model_parser.wrappers.Conv2d.quantizer.weight_quantizer.initializer.n_iters=7",  # `!MinErrorInitializer` had none
        "task.callbacks.0.bins=10",
    ])
    assert config["task"].seed == 3 and config["task"].callbacks[0].bins == 10
    assert "n_iters: 7" in effective_config_text(RUPQ_W4A4, [
        "model_parser.wrappers.Conv2d.quantizer.weight_quantizer.initializer.n_iters=7"])
    sr = REPO / "rupq/examples/quantized/superresolution/edsr/w4a4_rupq.yaml"
    tree = config_tree(effective_path(sr, ["model_parser.half_wave.exceptions.body.3.conv_block.0=true"]))
    assert tree["model_parser"]["half_wave"]["exceptions"]["body.3.conv_block.0"] is True


@pytest.mark.parametrize("override, message", [
    ("task.epoch=1", "--set task.epoch=1: no key 'epoch' in task (a !Task); closest: epochs"),
    ("optimizers.weight_optimizer.params.lrr=1", "no key 'lrr' in optimizers.weight_optimizer.params; closest: lr"),
    ("task.epochs.x=1", "task.epochs is a single value (90), not a mapping"),
    ("task.callbacks.3.bins=1", "task.callbacks is a list of 1; '3' is not an index in it (0 to 0)"),
    ("task.epochs", "--set task.epochs: expected KEY=VALUE"),
    ("task.epochs=[1,", "the value is not valid YAML"),
    ("task..epochs=1", "is not a dotted path"),
])
def test_bad_overrides_are_one_line_errors(override, message):
    with pytest.raises(ConfigError) as error:
        load_config(RUPQ_W4A4, [override])
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_bad_value_is_reported_at_the_override():
    with pytest.raises(ConfigError, match=r"^--set dataset=!FashionMNIST \{\}: unknown tag !FashionMNIST; did you mean"):
        load_config(RUPQ_W4A4, ["dataset=!FashionMNIST {}"])
    with pytest.raises(ConfigError, match=r"w4a4_rupq.yaml:\d+: !Task: epochs must be at least 1, got 0"):
        load_config(RUPQ_W4A4, ["task.epochs=0"])


def test_effective_config_reads_back_the_same_and_keeps_anchors():
    overrides = ["task.epochs=2", "dataset.batch_size=4"]
    text = effective_config_text(RUPQ_W4A4, overrides)
    assert text.startswith(f"# {RUPQ_W4A4} with\n#   --set task.epochs=2\n")
    assert "dataset: &dataset !ImageNet2012Dataloader" in text and "dataset: *dataset" in text
    config = load_config(effective_path(RUPQ_W4A4, overrides))
    assert config["task"].epochs == 2 and config["task"].training_loop.dataset is config["dataset"]
    assert effective_config_text(RUPQ_W4A4) == RUPQ_W4A4.read_text()  # no overrides: the file itself


def test_config_value_text_is_one_line_of_yaml():
    sr = REPO / "rupq/examples/quantized/superresolution/edsr/w4a4_rupq.yaml"
    text = config_value_text(sr, "task.callbacks.0")
    assert text.startswith("!BenchmarkSuperresolutionCallback {") and "\n" not in text
    config = load_config(sr, [f"task.callbacks=[{text}]"])
    assert [type(c).__name__ for c in config["task"].callbacks] == ["BenchmarkSuperresolutionCallback"]


def test_a_tag_in_another_case_is_accepted_with_a_warning(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("metric: !accuracy\nloss: !CrossEntropyLoss\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = load_config(config)
    assert type(loaded["metric"]).__name__ == "Accuracy"
    assert [str(w.message) for w in caught if w.category is ConfigCaseWarning] == [f"{config}:1: tag !accuracy read as !Accuracy"]


def test_cli_saves_the_effective_config_and_lists_overrides(tmp_path, tiny_fashion_mnist):
    config = fashion_config(tmp_path / "fp.yaml", tiny_fashion_mnist)
    config.write_text(config.read_text().replace("!Accuracy", "!accuracy", 1))
    result = run_main("--config", config, "--logdir", tmp_path / "logs", "--set", "dataset.batch_size=32",
                     "--set", "task.epochs=2")
    assert result.returncode == 0, result.stderr
    assert f"warning: {config}:" in result.stderr and "tag !accuracy read as !Accuracy" in result.stderr
    version = tmp_path / "logs" / "version_0"
    saved = load_config(version / "config.yaml")
    assert saved["task"].epochs == 2 and saved["dataset"].batch_size == 32
    assert json.loads((version / "results.json").read_text())["overrides"] == ["dataset.batch_size=32", "task.epochs=2"]

    wrong = run_main("--config", config, "--logdir", tmp_path / "logs", "--set", "task.epoch=2")
    assert wrong.returncode == 2
    assert wrong.stderr.strip().splitlines()[-1] == "error: --set task.epoch=2: no key 'epoch' in task (a !Task); closest: epochs"
    assert "Traceback" not in wrong.stderr and not (tmp_path / "logs" / "version_1").exists()
