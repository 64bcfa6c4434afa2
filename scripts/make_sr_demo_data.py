"""Build a small super-resolution dataset from real photographs that ship with scikit-image and
scikit-learn, in the DIV2K and Set14 layouts, so that the SR pipeline can be tried offline.

    python scripts/make_sr_demo_data.py --out data/sr_demo [--scales 2 3 4]

writes::

    OUT/DIV2K/DIV2K_train_HR/0001.png …         training photos (ids 1…)
    OUT/DIV2K/DIV2K_train_HR/0801.png …         validation photos (ids 801…)
    OUT/DIV2K/DIV2K_train_LR_bicubic/X{s}/0001x{s}.png …
    OUT/Set14/HR/<name>.png, OUT/Set14/LR_bicubic/X{s}/<name>x{s}.png   (the validation photos)
    OUT/datasets_info.yaml                       div2k: and set14: entries for RUPQ_DATASETS_INFO

LR images are Pillow's bicubic downscaling of the HR photo (DIV2K's HR photos are first
cropped to a multiple of every requested scale, as DIV2K's are). At the end it prints the PSNR
of bicubic upscaling on the validation photos, the reference a trained model must beat.

Only scikit-image photographs whose file is inside the installed wheel are used: each file is
checked against the scikit-image data registry (present beside the package, with the registered
SHA-256) before its loader is called, so nothing is ever downloaded.
"""

import argparse
import hashlib
import math
from pathlib import Path

import numpy as np
from PIL import Image


# (name, source, files in the scikit-image registry). Grey photos test the grey → RGB path.
TRAIN_PHOTOS = [
    ("astronaut", "skimage", ["data/astronaut.png"]),
    ("rocket", "skimage", ["data/rocket.jpg"]),
    ("hubble_deep_field", "skimage", ["data/hubble_deep_field.jpg"]),
    ("stereo_motorcycle", "skimage", ["data/motorcycle_left.png", "data/motorcycle_right.png", "data/motorcycle_disp.npz"]),
    ("immunohistochemistry", "skimage", ["data/ihc.png"]),
    ("flower.jpg", "sklearn", []),
    ("camera", "skimage", ["data/camera.png"]),
    ("coins", "skimage", ["data/coins.png"]),
    ("moon", "skimage", ["data/moon.png"]),
    ("grass", "skimage", ["data/grass.png"]),
    ("gravel", "skimage", ["data/gravel.png"]),
    ("brick", "skimage", ["data/brick.png"]),
]
VAL_PHOTOS = [
    ("coffee", "skimage", ["data/coffee.png"]),
    ("china.jpg", "sklearn", []),
    ("chelsea", "skimage", ["data/chelsea.png"]),
]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_shipped(files: list[str]) -> None:
    """Fail unless every registry file is inside the installed scikit-image (so no download happens)."""
    import skimage
    from skimage.data._registry import registry

    package_root = Path(skimage.__file__).parent
    for name in files:
        path = package_root / name
        if name not in registry or not path.is_file() or sha256(path) != registry[name]:
            raise SystemExit(f"error: {name} does not ship with scikit-image {skimage.__version__} "
                             f"(not at {path} with its registered hash); it would be downloaded")


def load_photo(name: str, source: str, files: list[str]) -> np.ndarray:
    if source == "sklearn":
        from sklearn.datasets import load_sample_image

        return load_sample_image(name)
    check_shipped(files)
    import skimage.data

    photo = getattr(skimage.data, name)()
    return photo[0] if name == "stereo_motorcycle" else photo  # (left, right, disparity): the left view


def save_pair(hr: Image.Image, scale: int, hr_path: Path, lr_path: Path) -> None:
    lr = hr.resize((hr.width // scale, hr.height // scale), Image.BICUBIC)
    hr_path.parent.mkdir(parents=True, exist_ok=True)
    lr_path.parent.mkdir(parents=True, exist_ok=True)
    if not hr_path.exists():
        hr.save(hr_path)
    lr.save(lr_path)


def short_name(name: str) -> str:
    return name.split(".")[0]


def build(out: Path, scales: list[int]) -> None:
    multiple = math.lcm(*scales)
    div2k, set14 = out / "DIV2K", out / "Set14"
    numbered = list(enumerate(TRAIN_PHOTOS, start=1)) + list(enumerate(VAL_PHOTOS, start=801))
    for number, (name, source, files) in numbered:
        photo = Image.fromarray(load_photo(name, source, files))
        # DIV2K's HR sizes are multiples of 12, so its LR images tile the HR exactly.
        hr = photo.crop((0, 0, photo.width - photo.width % multiple, photo.height - photo.height % multiple))
        for scale in scales:
            save_pair(hr, scale, div2k / "DIV2K_train_HR" / f"{number:04d}.png",
                      div2k / "DIV2K_train_LR_bicubic" / f"X{scale}" / f"{number:04d}x{scale}.png")
            if number >= 801:  # Set14 layout, uncropped as Set14's own HR images are
                save_pair(photo, scale, set14 / "HR" / f"{short_name(name)}.png",
                          set14 / "LR_bicubic" / f"X{scale}" / f"{short_name(name)}x{scale}.png")
        print(f"{number:04d} {short_name(name):22s} {photo.width}×{photo.height} {photo.mode}")
    (out / "datasets_info.yaml").write_text(
        "# Written by scripts/make_sr_demo_data.py; use with RUPQ_DATASETS_INFO=<this file>\n"
        "div2k: DIV2K\nset14: Set14\n"
    )


def bicubic_psnr(out: Path, scale: int) -> float:
    """PSNR (Y, ``scale`` border pixels cropped) of bicubic upscaling on the validation photos."""
    from rupq.dataloaders import DIV2KDataloader
    from rupq.dataloaders.transforms.superresolution import bicubic_upscale
    from rupq.tools.metrics import PSNR

    loader = DIV2KDataloader(batch_size=1, patch_size=2 * scale, scale=scale, normalize=False, num_workers=0,
                             root=str(out / "DIV2K"))
    psnr = PSNR(min_val=0, max_val=255, boundary_size=scale)
    for lr, hr in loader.val_dataloader():
        psnr.update(bicubic_upscale(lr, scale, normalize=False), hr)
    return psnr.compute()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="folder to write the dataset into")
    parser.add_argument("--scales", type=int, nargs="+", default=[2, 3, 4], help="LR scales to make")
    args = parser.parse_args(argv)
    build(args.out, args.scales)
    print(f"\nwrote {args.out}; train with RUPQ_DATASETS_INFO={args.out / 'datasets_info.yaml'}")
    for scale in args.scales:
        print(f"bicubic ×{scale} PSNR on the {len(VAL_PHOTOS)} validation photos: {bicubic_psnr(args.out, scale):.2f} dB")


if __name__ == "__main__":
    main()
