"""Config mistakes end as one line ``error: FILE:LINE: …`` with exit status 2, never a traceback.

Every case runs the command line's ``main`` (argument parsing, error printing, exit status) in
this process; the few real ``python rupq/main.py`` runs check what only a fresh interpreter shows
(no traceback on stderr, ``--debug`` showing it) at a few seconds each.
"""

import re

import pytest

from conftest import FASHION_FP_CONFIG, SMALL_MODEL, run_cli, write_config
from reliability_support import line_of, one_error_line, run_main

BASE = FASHION_FP_CONFIG.format(root="/nonexistent/fashion", epochs=1, model=SMALL_MODEL)


def edit(old: str, new: str, text: str = BASE) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


# (name, config text, --load or None, the needle of the line the error must name, message after "FILE:LINE: ")
LOAD_TIME = [
    ("unknown tag", edit("!CrossEntropyLoss", "!CrossEntropyLos"), "!CrossEntropyLos",
     "unknown tag !CrossEntropyLos; did you mean !CrossEntropyLoss"),  # torch 2.14 has more near names
    ("unexpected argument", edit("  batch_size: 16", "  batch_sise: 16"), "!FashionMNISTDataloader",
     "!FashionMNISTDataloader: unexpected argument 'batch_sise'; accepted: batch_size, num_workers, root, "
     "train_subset, val_subset, augment"),
    ("missing argument", edit("  training_loop: *training_loop\n", ""), "task: !Task",
     "!Task: missing a required argument: 'training_loop'; accepted: training_loop, epochs, model_saver, "
     "model_arch, optimizers, model_parser, check_val_every_n_epochs, callbacks, model_kwargs, seed"),
    ("string for a number", edit("  epochs: 1", "  epochs: ten"), "task: !Task",
     "!Task: argument 'epochs' should be int, got 'ten'"),
    ("list for a mapping", edit("  train_metrics:\n    accuracy: !Accuracy", "  train_metrics:\n    - !Accuracy"),
     "!TrainingLoop", "!TrainingLoop: argument 'train_metrics' should be dict | None, got [<rupq.tools.metrics"),
    ("mapping for a number", edit("  epochs: 1", "  epochs: {n: 1}"), "task: !Task",
     "!Task: argument 'epochs' should be int, got {'n': 1}"),
    ("value a constructor refuses", edit("  epochs: 1", "  epochs: 0"), "task: !Task",
     "!Task: epochs must be at least 1, got 0"),
    ("YAML syntax error", edit("params: {lr: 0.05, momentum: 0.9}", "params: {lr: 0.05, momentum: 0.9"),
     "    scheduler:", "YAML syntax error: while parsing a flow mapping (from line 8) expected ',' or '}', but got ':'"),
    ("bad indentation", edit("  loss: !CrossEntropyLoss", "    loss: !CrossEntropyLoss"), "loss: !CrossEntropyLoss",
     "YAML syntax error: while parsing a block mapping (from line 13) expected <block end>, but found "
     "'<block mapping start>'"),
    ("impossible date", edit("  epochs: 1", "  epochs: 2024-13-45"), "epochs:",
     "cannot read this value: month must be in 1..12"),
]


@pytest.mark.parametrize("name, text, needle, message", LOAD_TIME, ids=[case[0] for case in LOAD_TIME])
def test_config_errors_when_loading(tmp_path, name, text, needle, message):
    config = write_config(tmp_path / "cfg.yaml", text)
    result = run_main("--config", config, "--logdir", tmp_path / "logs")
    line = one_error_line(result)
    assert line.startswith(f"error: {config}:{line_of(text, needle)}: {message}"), line
    assert result.stderr.strip() == line  # nothing else on stderr
    assert not (tmp_path / "logs").exists()  # refused before creating anything


def optimizer(text: str) -> str:
    """The test config with its optimizer entry replaced by ``text`` (indented under ``optimizers:``)."""
    old = ("  weight_optimizer:\n    name: SGD\n    params: {lr: 0.05, momentum: 0.9}\n    scheduler:\n"
           "      name: CosineAnnealingLR\n      params: {T_max: 8}\n")
    return edit(old, text)


RUN_TIME = [
    ("unknown optimizer", edit("    name: SGD", "    name: SGDD"), "name: SGDD",
     "optimizer 'weight_optimizer': unknown optimizer 'SGDD'; did you mean SGD, ASGD?"),
    ("unknown scheduler", edit("name: CosineAnnealingLR", "name: CosineAnnealing"), "name: CosineAnnealing",
     "optimizer 'weight_optimizer': unknown scheduler 'CosineAnnealing'; did you mean CosineAnnealingLR"),
    ("unknown model_params_type",
     optimizer("  weight_optimizer:\n    name: SGD\n    model_params_type: weights\n    params: {lr: 0.1}\n"),
     "model_params_type: weights",
     "optimizer 'weight_optimizer': unknown model_params_type 'weights'; did you mean weight? "
     "(accepted: all, weight, quant, quant_input, quant_weight)"),
    ("empty parameter group",
     optimizer("  weight_optimizer:\n    name: SGD\n    model_params_type: quant_weight\n    params: {lr: 0.1}\n"),
     "model_params_type: quant_weight",
     "optimizer 'weight_optimizer': model_params_type 'quant_weight' selects no parameters of this model "
     "(is the model quantized? add a model_parser)"),
    ("string for the learning rate", edit("params: {lr: 0.05, momentum: 0.9}", "params: {lr: fast}"),
     "params: {lr: fast}", "optimizer 'weight_optimizer' (SGD): '<' not supported between instances of 'str' and"),
    ("list for optimizer params", edit("params: {lr: 0.05, momentum: 0.9}", "params: [0.05, 0.9]"),
     "params: [0.05, 0.9]", "optimizer 'weight_optimizer' (SGD): params must be a mapping, got list"),
    ("unexpected optimizer key", edit("    name: SGD", "    name: SGD\n    lr: 0.1"), "    lr: 0.1",
     "optimizer 'weight_optimizer': unexpected key 'lr'; accepted: name, model_params_type, params, scheduler"),
    ("unknown model_arch", edit("model_arch: small_resnet", "model_arch: small_resnett"), "task: !Task",
     "unknown model_arch 'small_resnett'; did you mean small_resnet"),
]


@pytest.mark.parametrize("name, text, needle, message", RUN_TIME, ids=[case[0] for case in RUN_TIME])
def test_config_errors_found_when_running(tmp_path, name, text, needle, message):
    config = write_config(tmp_path / "cfg.yaml", text)
    line = one_error_line(run_main("--config", config, "--logdir", tmp_path / "logs"))
    assert line.startswith(f"error: {config}:{line_of(text, needle)}: {message}"), line


def test_missing_config_file(tmp_path):
    result = run_main("--config", tmp_path / "nope.yaml", "--logdir", tmp_path / "logs")
    assert one_error_line(result) == f"error: config file not found: {tmp_path / 'nope.yaml'}"


def test_config_without_a_task(tmp_path):
    config = write_config(tmp_path / "cfg.yaml", "metric: !Accuracy\n")
    result = run_main("--config", config, "--logdir", tmp_path / "logs")
    assert one_error_line(result) == f"error: {config}: the config needs a top-level `task: !Task`, found nothing"


def test_model_arch_and_load_together_or_neither(tmp_path):
    both = write_config(tmp_path / "both.yaml", BASE)
    line = one_error_line(run_main("--config", both, "--logdir", tmp_path / "l", "--load", tmp_path / "m.ckpt"))
    assert line == (f"error: {both}:{line_of(BASE, 'task: !Task')}: the config sets model_arch and --load was given: "
                    "use one (model_arch trains from scratch, --load starts from a checkpoint)")
    text = edit(SMALL_MODEL, "")
    neither = write_config(tmp_path / "neither.yaml", text)
    line = one_error_line(run_main("--config", neither, "--logdir", tmp_path / "l"))
    assert line == (f"error: {neither}:{line_of(text, 'task: !Task')}: no model: set model_arch in the config or "
                    "give --load with a model.ckpt (or torchvision:resnet18)")


def test_real_command_line_prints_one_line_and_debug_shows_the_traceback(tmp_path):
    text = edit("    name: SGD", "    name: SGDD")
    config = write_config(tmp_path / "cfg.yaml", text)
    result = run_cli("--config", config, "--logdir", tmp_path / "logs")
    expected = (f"error: {config}:{line_of(text, 'name: SGDD')}: optimizer 'weight_optimizer': unknown optimizer "
                "'SGDD'; did you mean SGD, ASGD?")
    assert result.returncode == 2 and result.stderr.strip() == expected, result.stderr

    text = edit("!CrossEntropyLoss", "!CrossEntropyLos")
    config = write_config(tmp_path / "tag.yaml", text)
    debug = run_cli("--config", config, "--logdir", tmp_path / "logs", "--debug")
    assert debug.returncode == 1
    assert "Traceback (most recent call last)" in debug.stderr
    assert re.search(r"rupq\.errors\.ConfigError: .*tag\.yaml:\d+: unknown tag !CrossEntropyLos", debug.stderr)
