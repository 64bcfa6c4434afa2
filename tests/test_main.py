"""End-to-end runs of the command line on tiny data: ``rupq.main.main`` in this process (the
command's own parsing, printing and exit status), and a fresh interpreter where the process
itself matters (``python -m rupq``, a missing config reported before torch is imported, a
checkpoint that would run code). Resuming in a fresh process: tests/reliability."""

import re
import subprocess
import sys

import torch

from conftest import REPO, fashion_config, run_cli, run_main, write_config
from rupq.tools.utils.checkpoint import load_checkpoint


def test_resnet18_example_config_trains_on_imagenet_layout(tmp_path, tiny_imagenet, datasets_info):
    datasets_info(imagenet2012=tiny_imagenet)
    text = (REPO / "rupq/examples/float/classification/resnet18/fp.yaml").read_text()
    text = text.replace("batch_size: 512", "batch_size: 4\n  num_workers: 0").replace("epochs: 90", "epochs: 1")
    config = write_config(tmp_path / "fp.yaml", text)
    logdir = tmp_path / "logs"
    first = run_main("--config", config, "--logdir", logdir)
    assert first.returncode == 0, first.stderr
    version = logdir / "version_0"
    for name in ("model.ckpt", "config.yaml", "results.json", "checkpoints/last.ckpt"):
        assert (version / name).is_file(), name
    assert list(version.glob("events.out.tfevents.*"))
    model = load_checkpoint(version / "model.ckpt")
    assert model["arch"] == {"name": "resnet18", "kwargs": {}} and model["quantized"] is False
    first_run_files = {path: path.read_bytes() for path in version.rglob("*") if path.is_file()}
    second = run_main("--config", config, "--logdir", logdir)
    assert second.returncode == 0, second.stderr
    assert (logdir / "version_1" / "model.ckpt").is_file()
    # The first run was left alone: the same files, byte for byte.
    assert {path: path.read_bytes() for path in version.rglob("*") if path.is_file()} == first_run_files


def final_weights(version_dir):
    return load_checkpoint(version_dir / "checkpoints" / "last.ckpt")["model"]["state_dict"]


def test_resume_after_epoch_one_equals_uninterrupted_run(tmp_path, tiny_fashion_mnist):
    two = fashion_config(tmp_path / "two.yaml", tiny_fashion_mnist, epochs=2)
    one = fashion_config(tmp_path / "one.yaml", tiny_fashion_mnist, epochs=1)
    assert run_main("--config", two, "--logdir", tmp_path / "straight").returncode == 0
    assert run_main("--config", one, "--logdir", tmp_path / "stopped").returncode == 0
    resumed = run_main("--config", two, "--logdir", tmp_path / "resumed",
                      "--checkpoint_path", tmp_path / "stopped/version_0/checkpoints/last.ckpt")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at epoch 2, iteration 1" in resumed.stdout
    expected = final_weights(tmp_path / "straight/version_0")
    actual = final_weights(tmp_path / "resumed/version_0")
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name


def test_load_round_trip(tmp_path, tiny_fashion_mnist):
    from rupq.config import load_config
    from rupq.tools.training.task import RunContext

    trained = fashion_config(tmp_path / "fp.yaml", tiny_fashion_mnist)
    assert run_main("--config", trained, "--logdir", tmp_path / "fp").returncode == 0
    checkpoint = tmp_path / "fp/version_0/model.ckpt"
    finetune = fashion_config(tmp_path / "ft.yaml", tiny_fashion_mnist, with_model=False)
    task = load_config(finetune)["task"]
    model = task.build_model(RunContext(version_dir=None, device=torch.device("cpu"), load=str(checkpoint)))
    saved = load_checkpoint(checkpoint)["state_dict"]
    for name, value in model.state_dict().items():
        assert torch.equal(value, saved[name]), name
    result = run_main("--config", finetune, "--logdir", tmp_path / "ft", "--load", checkpoint)
    assert result.returncode == 0, result.stderr


class RunsCode:
    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_with_pickled_code_is_refused(tmp_path, tiny_fashion_mnist):
    marker = tmp_path / "pwned"
    payload = RunsCode()
    payload.marker = marker
    evil = tmp_path / "evil.ckpt"
    torch.save({"format": "rupq-model-v1", "state_dict": {}, "hook": payload}, evil)
    config = fashion_config(tmp_path / "ft.yaml", tiny_fashion_mnist, with_model=False)
    result = run_cli("--config", config, "--logdir", tmp_path / "logs", "--load", evil)
    assert result.returncode == 2
    assert f"error: refusing to load {evil}: it holds Python objects other than tensors and plain data" in result.stderr
    assert "Traceback" not in result.stderr
    assert not marker.exists()
    # Sanity check that the file really runs code when unpickled without weights_only.
    with open(evil, "rb"):
        torch.load(evil, weights_only=False)
    assert marker.exists()


def test_model_source_errors(tmp_path, tiny_fashion_mnist):
    with_model = fashion_config(tmp_path / "a.yaml", tiny_fashion_mnist)
    without = fashion_config(tmp_path / "b.yaml", tiny_fashion_mnist, with_model=False)
    both = run_main("--config", with_model, "--logdir", tmp_path / "l", "--load", tmp_path / "x.ckpt")
    assert both.returncode == 2
    assert re.search(r"a\.yaml:\d+: the config sets model_arch and --load was given", both.stderr)
    neither = run_main("--config", without, "--logdir", tmp_path / "l")
    assert neither.returncode == 2 and "no model: set model_arch in the config or give --load" in neither.stderr


def test_missing_dataset_folder_is_one_line(tmp_path, datasets_info):
    datasets_info(imagenet2012=tmp_path / "nowhere")
    text = (REPO / "rupq/examples/float/classification/resnet18/fp.yaml").read_text()
    config = write_config(tmp_path / "fp.yaml", text)
    result = run_main("--config", config, "--logdir", tmp_path / "logs")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"error: dataset 'imagenet2012': folder {tmp_path / 'nowhere'} does not exist; set 'imagenet2012:' in "
        f"{tmp_path / 'datasets_info.yaml'}, point RUPQ_DATASETS_INFO at a file of your own, "
        "or give !ImageNet2012Dataloader a root: argument"
    ]


def test_python_dash_m_and_logdir_that_is_a_file(tmp_path, tiny_fashion_mnist):
    config = fashion_config(tmp_path / "a.yaml", tiny_fashion_mnist)
    afile = tmp_path / "afile"
    afile.write_text("x")
    result = subprocess.run([sys.executable, "-m", "rupq", "--config", str(config), "--logdir", str(afile)],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: --logdir {afile} is a file, not a folder"


def test_a_missing_config_or_a_yaml_typo_is_reported_before_torch_is_imported(tmp_path):
    """A typo costs a fraction of a second, not the seconds of importing torch."""
    (tmp_path / "typo.yaml").write_text("task: [1\n")
    code = ("import sys\nfrom rupq.main import main\nfor config in ('missing.yaml', 'typo.yaml'):\n"
            "    try:\n        main(['--config', config, '--logdir', 'logs'])\n"
            "    except SystemExit as exit:\n        print(exit.code, 'torch' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert result.stdout.split("\n")[:2] == ["2 False", "2 False"], result.stderr
    assert "config file not found: missing.yaml" in result.stderr and "typo.yaml:2: YAML syntax error" in result.stderr
