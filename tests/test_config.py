import hashlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from rupq.config import load_config
from rupq.config_locations import argument_locations, location_of
from rupq.errors import ConfigError
from rupq.tags import tag_registry
from rupq.tools.metrics import Accuracy
from rupq.tools.training import Task, TrainingLoop


def write(tmp_path, text, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_tags_build_objects_and_aliases_share_them(tmp_path):
    path = write(tmp_path, """
        dataset: &dataset !FashionMNISTDataloader
          batch_size: 8
        metric: &metric !Accuracy
        loop: !TrainingLoop
          dataset: *dataset
          loss: !CrossEntropyLoss
          train_metrics: {accuracy: *metric}
          val_metrics: {accuracy: *metric}
        """)
    config = load_config(path)
    loop = config["loop"]
    assert isinstance(loop, TrainingLoop)
    assert loop.dataset is config["dataset"]
    assert loop.train_metrics["accuracy"] is loop.val_metrics["accuracy"] is config["metric"]
    assert isinstance(config["metric"], Accuracy)
    assert isinstance(loop.loss, torch.nn.CrossEntropyLoss)
    assert location_of(loop) == f"{path}:5"


def test_loading_touches_no_data(tmp_path):
    path = write(tmp_path, """
        dataset: !ImageNet2012Dataloader
          batch_size: 8
          root: /nonexistent/imagenet
        """)
    assert load_config(path)["dataset"].batch_size == 8


def test_exponent_without_dot_is_a_number(tmp_path):
    # The seed's detection configs write `weight_decay: 5e-4`, which YAML 1.1 reads as a string.
    config = load_config(write(tmp_path, "a: 5e-4\nb: 1.0e+2\nc: 7\nd: '5e-4'\n"))
    assert config == {"a": 5e-4, "b": 100.0, "c": 7, "d": "5e-4"}


def test_tag_lookup_is_case_insensitive_when_unambiguous(tmp_path):
    assert isinstance(load_config(write(tmp_path, "m: !accuracy\n"))["m"], Accuracy)


def test_empty_node_means_no_arguments_and_sequence_means_positional(tmp_path):
    config = load_config(write(tmp_path, "a: !Accuracy\nb: !Accuracy [5]\n"))
    assert config["a"].top_k == 1 and config["b"].top_k == 5


@pytest.mark.parametrize(
    "text, message",
    [
        ("m: !Acuracy\n", "cfg.yaml:1: unknown tag !Acuracy; did you mean !Accuracy"),
        ("m: !Accuracy\n  top_kk: 5\n", "cfg.yaml:1: !Accuracy: unexpected argument 'top_kk'; accepted: top_k"),
        ("m: !TrainingLoop\n  loss: !L1Loss\n", "cfg.yaml:1: !TrainingLoop: missing a required argument: 'dataset'"),
        ("m: !Accuracy\n  top_k: five\n", "cfg.yaml:1: !Accuracy: argument 'top_k' should be int, got 'five'"),
        ("a: [1, 2\nb: 3\n", "cfg.yaml:2: YAML syntax error"),
        ("- 1\n- 2\n", "a config must be a mapping"),
        ("m: !Accuracy 3\n", "expected a mapping of arguments or nothing"),
        ("m: !Accuracy\n  top_k: 0\n", "cfg.yaml:1: !Accuracy: top_k must be at least 1, got 0"),
    ],
)
def test_errors_name_file_and_line(tmp_path, text, message):
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, text))
    assert message in str(error.value)


def _parse_bits(text):
    return int(text, base=2)


class _DividesByZero:
    def __init__(self, n: int = 0):
        self.value = 1 / n


class _ParsesInAHelper:
    def __init__(self, n: int = 0):
        self.n = _parse_bits(str(n))


def test_a_bug_in_a_constructor_keeps_its_traceback(tmp_path, monkeypatch):
    # Only the user's mistakes become one line: an exception the constructor did not raise for
    # its arguments (here raised in the functions it calls) propagates as it is.
    monkeypatch.setitem(tag_registry(), "DividesByZero", _DividesByZero)
    with pytest.raises(ZeroDivisionError):
        load_config(write(tmp_path, "m: !DividesByZero\n"))
    # A ValueError is the user's only when the constructor raised it itself, not a function it calls.
    monkeypatch.setitem(tag_registry(), "ParsesInAHelper", _ParsesInAHelper)
    with pytest.raises(ValueError, match="invalid literal") as error:
        load_config(write(tmp_path, "m: !ParsesInAHelper {n: 3}\n"))
    assert not isinstance(error.value, ConfigError)


def test_a_value_the_constructor_refuses_is_one_line(tmp_path):
    # Raised by the constructor itself, also torch's: the user's value, named at its line.
    text = "m: !Conv2d {in_channels: 1, out_channels: 1, kernel_size: 1, groups: 0}\n"
    with pytest.raises(ConfigError, match=r"cfg.yaml:1: !Conv2d: groups must be a positive integer"):
        load_config(write(tmp_path, text))
    # A ConfigError the constructor raises is the user's, wherever it raises it (here in a function it calls).
    text = "d: &d !FashionMNISTDataloader {batch_size: 8}\nm: !TrainingLoop {dataset: *d, val_metrics: {top: 5}}\n"
    with pytest.raises(ConfigError, match=r"cfg.yaml:2: !TrainingLoop: val_metrics.top is not a metric"):
        load_config(write(tmp_path, text))


def test_locations_are_kept_beside_the_objects_not_on_them(tmp_path):
    path = write(tmp_path, """
        loop: !TrainingLoop
          dataset: !FashionMNISTDataloader {batch_size: 8}
          train_metrics:
            accuracy: !Accuracy
        """)
    loop = load_config(path)["loop"]
    assert location_of(loop) == f"{path}:2" and location_of(loop.train_metrics["accuracy"]) == f"{path}:5"
    assert argument_locations(loop, "train_metrics") == {"": f"{path}:4", "accuracy": f"{path}:5"}
    assert not any(name.startswith("config_location") for name in vars(loop))
    assert location_of(TrainingLoop(loop.dataset)) is None and argument_locations(loop.dataset, "x") == {}


def test_the_config_modules_import_no_tag_package_and_no_tag_package_imports_them():
    # The packages that tags name are rupq.tags's to import, on the first lookup: importing the
    # loader imports none of them, and they read locations from rupq.config_locations, so that
    # no import cycle runs through the loader.
    code = ("import sys, rupq.config, rupq.config_text; from rupq.tags import TAG_PACKAGES, tag_registry; "
            "print([m for m in sys.modules if m.startswith(TAG_PACKAGES)]); "
            "[sys.modules.pop(m) for m in list(sys.modules) if m.startswith(('rupq.config', 'rupq.tags'))]; "
            "tag_registry(); print([m for m in sys.modules if m in ('rupq.config', 'rupq.config_text')])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["[]", "[]"], result.stdout + result.stderr


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_seed_float_configs_load(tmp_path):
    from pathlib import Path

    for name in ("resnet18", "mobilenet_v2"):
        config = load_config(Path(__file__).parent.parent / "rupq/examples/float/classification" / name / "fp.yaml")
        assert isinstance(config["task"], Task)
        assert config["task"].model_arch == name


EXAMPLES = sorted((Path(__file__).parent.parent / "rupq" / "examples").rglob("*.yaml"))
SEED_MANIFEST = Path(__file__).parent / "examples" / "seed_configs.sha256"
SEED_EXAMPLES = Path(__file__).resolve().parent.parent.parent / "shared" / "seed" / "examples"


def seed_manifest() -> dict[str, str]:
    """``{path under rupq/examples: SHA-256}`` of the 34 seed configs (``sha256sum`` format),
    recorded from the original project's ``seed/examples``, so that a clone checks them alone."""
    entries = [line.split("  ", 1) for line in SEED_MANIFEST.read_text().splitlines()]
    return {path: digest for digest, path in entries}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p).split("examples/")[1])
def test_every_example_config_loads(path):
    assert isinstance(load_config(path)["task"], Task)


def test_seed_configs_are_shipped_unchanged_and_load():
    examples = Path(__file__).parent.parent / "rupq" / "examples"
    manifest = seed_manifest()
    assert len(manifest) == 34
    for relative, digest in manifest.items():
        shipped = examples / relative
        assert shipped.is_file(), f"seed config {relative} is not shipped"
        assert hashlib.sha256(shipped.read_bytes()).hexdigest() == digest, f"{shipped} differs from the seed's"
        assert isinstance(load_config(shipped)["task"], Task)
    # Beside a workspace that has the seed itself, the record must also match it.
    if SEED_EXAMPLES.is_dir():
        seed = {str(path.relative_to(SEED_EXAMPLES)): hashlib.sha256(path.read_bytes()).hexdigest()
                for path in SEED_EXAMPLES.rglob("*.yaml")}
        assert seed == manifest


def test_a_base_constructor_refusing_an_argument_is_a_config_error_once_dynamo_wrapped_it(tmp_path):
    """torch.compile's first compilation replaces nn.Module.__init__ with a wrapper (seen in the
    suite's fuzz test once a compiled test had run in the same process): an unknown argument that
    nn.Module.__init__ refuses is still the user's."""
    from torch._dynamo.mutation_guard import install_generation_tagging_init

    install_generation_tagging_init()  # what torch.compile does on its first compilation

    path = tmp_path / "cfg.yaml"
    path.write_text("callback: !Module\n  map: 1\n")
    with pytest.raises(ConfigError, match=r"cfg.yaml:1: !Module: .*unexpected keyword argument 'map'"):
        load_config(path)
