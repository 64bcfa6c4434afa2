"""Super-resolution learns: the shipped demo recipes (``rupq/examples/superresolution_demo``), on
a tiny learnable set made here, beat bicubic upscaling on Set14 by a wide margin, in full
precision and after w4a4 RUPQ QAT from that model.

The set (``superresolution_data.write_div2k`` / ``write_set14``): random 24×24 LR images whose HR
image is their ×2 nearest-neighbour upscaling, in the DIV2K and Set14 layouts. Bicubic upscaling
blurs those blocks; a network can learn the exact mapping. Runs go through the command line's
``main`` in this process, with the demo's model (4 residual blocks of 32 features) and shorter
schedules.
"""

import json

import pytest

from conftest import REPO, edit_shipped, run_main, write_config
from superresolution_data import write_div2k, write_set14

DEMO = REPO / "rupq" / "examples" / "superresolution_demo"
TRAIN_IMAGES, REPEAT, BATCH = 8, 4, 8
ITERATIONS_PER_EPOCH = TRAIN_IMAGES * REPEAT // BATCH
FP_EPOCHS, QAT_EPOCHS = 10, 5

# Thresholds from measured runs (torch 2.14.1, one thread; data seeds 0, 1 and 2), each with its
# margin. Bicubic upscaling's Set14 PSNR on these images was 23.5-23.8 dB.
# - FP, 40 iterations: +12.9, +12.8, +13.0 dB above bicubic: at least +8 dB;
FP_MIN_GAIN_DB = 8.0
# - w4a4 RUPQ, 20 more iterations from that model: +12.5, +12.5, +12.5 dB above bicubic, 0.23 to
#   0.49 dB below its FP model: at least +8 dB above bicubic and at most 2 dB below FP.
QAT_MIN_GAIN_DB = 8.0
QAT_MAX_DROP_DB = 2.0

SHORTER = {  # the demo's schedule and batches, scaled to this set
    "  batch_size: 16\n": f"  batch_size: {BATCH}\n",
    "patch_size: 64": "patch_size: 32",
    "repeat: 20": f"repeat: {REPEAT}",
    "num_workers: 1": "num_workers: 0",
}


def demo_config(folder, name: str, epochs: int, shipped_epochs: int, shipped_t_max: int):
    """The demo's config ``name`` trained for ``epochs``, validated once at the end."""
    text = (DEMO / f"{name}.yaml").read_text()
    for old, new in SHORTER.items():
        text = edit_shipped(text, old, new)
    text = edit_shipped(text, f"T_max: {shipped_t_max}", f"T_max: {ITERATIONS_PER_EPOCH * epochs}")
    text = edit_shipped(text, f"  epochs: {shipped_epochs}\n", f"  epochs: {epochs}\n")
    text = edit_shipped(text, "check_val_every_n_epochs: 5", f"check_val_every_n_epochs: {epochs}")
    text = text.replace("    - !QuantImagesCallback\n", "")  # figures only (tested with the callbacks)
    return write_config(folder / f"{name}.yaml", text)


def set14_results(version_dir) -> tuple[float, float]:
    logged = json.loads((version_dir / "results.json").read_text())
    return logged["set14_PSNR"], logged["set14_bicubic_PSNR"]


def write_blocky_sr_set(folder, seed: int = 0):
    """DIV2K (8 training, 2 validation images) and Set14 (3 images) layouts under ``folder``,
    and a datasets-info file pointing at them."""
    write_div2k(folder / "div2k", scale=2, train_ids=tuple(range(1, TRAIN_IMAGES + 1)), val_ids=(801, 802),
                lr_size=(24, 24), seed=seed)
    write_set14(folder / "set14", scale=2, names=("baboon", "comic", "lenna"), lr_size=(24, 28), seed=seed + 1)
    info = folder / "datasets_info.yaml"
    info.write_text(f"div2k: {folder / 'div2k'}\nset14: {folder / 'set14'}\n")
    return info


def test_fp_then_w4a4_rupq_beat_bicubic(tmp_path, monkeypatch):
    folder = tmp_path
    monkeypatch.setenv("RUPQ_DATASETS_INFO", str(write_blocky_sr_set(folder)))
    monkeypatch.setenv("RUPQ_CACHE_DIR", str(folder / "cache"))
    fp = run_main("--config", demo_config(folder, "edsr_fp", FP_EPOCHS, 40, 600), "--logdir", folder / "fp")
    assert fp.returncode == 0, fp.stderr[-3000:]
    fp_psnr, bicubic = set14_results(folder / "fp/version_0")
    assert fp_psnr >= bicubic + FP_MIN_GAIN_DB, f"FP {fp_psnr:.2f} dB, bicubic {bicubic:.2f} dB"

    qat = run_main("--config", demo_config(folder, "edsr_w4a4_rupq", QAT_EPOCHS, 15, 225),
                   "--logdir", folder / "w4a4", "--load", folder / "fp/version_0/model.ckpt")
    assert qat.returncode == 0, qat.stderr[-3000:]
    psnr, bicubic = set14_results(folder / "w4a4/version_0")
    assert psnr >= bicubic + QAT_MIN_GAIN_DB, f"w4a4 RUPQ {psnr:.2f} dB, bicubic {bicubic:.2f} dB"
    assert psnr >= fp_psnr - QAT_MAX_DROP_DB, f"w4a4 RUPQ {psnr:.2f} dB, FP {fp_psnr:.2f} dB"
