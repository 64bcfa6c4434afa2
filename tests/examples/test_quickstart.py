"""The README's first command, on a tiny Fashion-MNIST made in the test."""

import os
import subprocess
import sys

from conftest import REPO


def test_quickstart_runs_fp_lsqplus_and_rupq(tmp_path, tiny_fashion_mnist, datasets_info):
    info = datasets_info(fashion_mnist=tiny_fashion_mnist)
    result = subprocess.run(
        [sys.executable, str(REPO / "rupq/examples/quickstart/run.py"), "--logdir", str(tmp_path / "qs")],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env={**os.environ, "RUPQ_DATASETS_INFO": str(info)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = (tmp_path / "qs" / "summary.md").read_text().splitlines()
    assert table[0] == "| run | what | top-1 (%) | time (min) | folder |"
    assert [row.split(" | ")[0] for row in table[2:]] == ["| FP", "| LSQ+ w4a4", "| RUPQ w4a4"]
    assert "layer1.0.conv1" in result.stdout  # the calibration report of the quantized runs
    for folder in ("fp", "lsqplus", "rupq"):
        assert (tmp_path / "qs" / folder / "version_0" / "model.ckpt").is_file()
