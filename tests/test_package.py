"""The installed package: the `rupq` command, `python -m rupq`, and no sys.path edits anywhere."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, fashion_config


def run(command, cwd):
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def rupq_command() -> list[str]:
    """The console script installed next to this Python (pip install [-e] .)."""
    script = Path(sys.executable).parent / "rupq"
    if not script.is_file():
        script = shutil.which("rupq")
    if script is None:
        pytest.fail("the `rupq` command is not installed: run `pip install -e .` first (see the README)")
    return [str(script)]


def test_rupq_train_runs_a_config_from_another_folder(tmp_path, tiny_fashion_mnist):
    config = fashion_config(tmp_path / "fp.yaml", tiny_fashion_mnist)
    result = run(rupq_command() + ["train", "--config", str(config), "--logdir", str(tmp_path / "logs")], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "logs" / "version_0" / "results.json").is_file()


def test_rupq_without_a_command_lists_the_commands_and_rejects_unknown_ones(tmp_path):
    listed = run(rupq_command(), cwd=tmp_path)
    assert listed.returncode == 0 and "train" in listed.stdout
    unknown = run(rupq_command() + ["trian"], cwd=tmp_path)
    assert unknown.returncode == 2 and "unknown command 'trian'" in unknown.stderr


@pytest.mark.parametrize("prefix", [["train"], []])
def test_python_dash_m_rupq_with_and_without_the_train_command(tmp_path, prefix):
    result = run([sys.executable, "-m", "rupq", *prefix, "--config", "missing.yaml", "--logdir", "logs"], cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.strip() == "error: config file not found: missing.yaml"


def test_no_sys_path_edits_and_no_imports_from_tests():
    sources = [path for folder in ("rupq", "bench", "scripts") for path in (REPO / folder).rglob("*.py")]
    offenders = []
    for path in sources:
        text = path.read_text()
        if "sys.path" in text or re.search(r"^\s*(from|import) (tests|conftest)\b", text, flags=re.M) or '"tests"' in text:
            offenders.append(str(path.relative_to(REPO)))
    assert not offenders
