"""What one reproduction report trains: the models, their sizes and schedules per budget.

Only data, model size, epochs and schedule length are chosen here; every recipe (quantizers,
initializers, optimizers, learning rates, bit-width exceptions) comes from the paper's config of
the same method and bit width (``derive.py``).
"""

from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "rupq" / "examples"

METHODS = ("lsqplus", "rupq")
METHOD_NAMES = {"fp": "FP", "lsqplus": "LSQ+", "rupq": "RUPQ", "bicubic": "bicubic"}


@dataclass(frozen=True)
class Model:
    """One model of the report and the paper configs whose recipes it follows."""

    heading: str  # the name in the report's section heading
    task: str  # "classification" or "superresolution"
    recipes: str  # folder under rupq/examples/{float,quantized}/
    bits: tuple  # bit widths (weights = activations), in training order
    scale: int = 1  # super-resolution factor
    # Length of the paper's schedule in iterations, for configs that give step milestones only.
    paper_iterations: int | None = None


# Training order inside a model: the lowest and the highest bit width first, so that a report cut
# short (and written with --report-only) already answers the two questions it is for.
MODELS = {
    "small_resnet": Model("small_resnet", "classification", "classification/resnet18", (2, 4, 3)),
    "mobilenet_v2": Model("mobilenet_v2", "classification", "classification/mobilenet_v2", (2, 4, 3)),
    "edsr": Model("EDSR", "superresolution", "superresolution/edsr", (2, 4), scale=2, paper_iterations=300000),
    "srresnet": Model("SRResNet", "superresolution", "superresolution/srresnet", (2, 4), scale=4),
}
CLASSIFICATION_MODELS = tuple(name for name, model in MODELS.items() if model.task == "classification")
SR_MODELS = tuple(name for name, model in MODELS.items() if model.task == "superresolution")


@dataclass(frozen=True)
class ModelBudget:
    """Size and schedule of one model's runs. Classification reads Fashion-MNIST; super-resolution
    the real-photo demo set of ``scripts/make_sr_demo_data.py`` (random patches of its training photos)."""

    model_kwargs: dict
    batch_size: int
    fp_epochs: int
    qat_epochs: int
    fp_train_subset: int | None = None  # training images of the FP run (None: all 60 000)
    qat_train_subset: int | None = None  # training images of each QAT run (None: all)
    val_subset: int | None = None  # test images used for validation (None: all 10 000)
    patch_size: int = 0
    repeat: int = 0  # patches drawn per training photo and epoch
    # Learning rate of the FP model (None: the paper config's, made for hundreds of thousands of
    # iterations). QAT always keeps the paper's rates.
    fp_lr: float | None = None


@dataclass(frozen=True)
class Budget:
    description: str
    models: dict = field(default_factory=dict)  # model name -> ModelBudget


MOBILENET_SMALL_INPUT = {"num_classes": 10, "in_channels": 1, "stem_stride": 2, "stage_strides": [1, 2, 2, 1, 1, 1, 1]}

BUDGETS = {
    "tiny": Budget(
        "smoke test: a few hundred images, one epoch per run, 2-block SR models",
        {
            "small_resnet": ModelBudget({"widths": [8, 16], "blocks": [1, 1]}, 64, 1, 1, 256, 256, 128),
            "mobilenet_v2": ModelBudget({**MOBILENET_SMALL_INPUT, "width_mult": 0.25}, 64, 1, 1, 256, 256, 128),
            "edsr": ModelBudget({"num_blocks": 2, "num_features": 8}, 4, 1, 1, patch_size=32, repeat=1),
            "srresnet": ModelBudget({"num_blocks": 2, "num_features": 8}, 4, 1, 1, patch_size=32, repeat=1),
        },
    ),
    "cpu": Budget(
        "2-core CPU: FP models on all 60 000 Fashion-MNIST training images to a plateau, QAT of several "
        "epochs on a fixed subset, validation on all 10 000 test images; small EDSR ×2 and SRResNet ×4",
        {
            "small_resnet": ModelBudget({}, 128, fp_epochs=6, qat_epochs=3, qat_train_subset=12000),
            "mobilenet_v2": ModelBudget({**MOBILENET_SMALL_INPUT, "width_mult": 0.35}, 128, fp_epochs=8,
                                        qat_epochs=3, qat_train_subset=6000),
            "edsr": ModelBudget({"num_blocks": 4, "num_features": 32}, 16, fp_epochs=20, qat_epochs=5,
                                patch_size=64, repeat=40, fp_lr=1e-3),
            # ×4 is harder than ×2: after 600 iterations SRResNet was still 0.2 dB below bicubic.
            "srresnet": ModelBudget({"num_blocks": 4, "num_features": 32}, 16, fp_epochs=60, qat_epochs=5,
                                    patch_size=96, repeat=40),
        },
    ),
    "gpu": Budget(
        "one GPU: all Fashion-MNIST images, FP 30 epochs, QAT 15 epochs; full-size MobileNet-v2 width, "
        "EDSR (16 blocks of 64 features) and SRResNet (16 blocks of 64 features)",
        {
            "small_resnet": ModelBudget({}, 128, fp_epochs=30, qat_epochs=15),
            "mobilenet_v2": ModelBudget({**MOBILENET_SMALL_INPUT, "width_mult": 1.0}, 128, fp_epochs=30, qat_epochs=15),
            "edsr": ModelBudget({"num_blocks": 16, "num_features": 64}, 16, fp_epochs=100, qat_epochs=40,
                                patch_size=96, repeat=100),
            "srresnet": ModelBudget({"num_blocks": 16, "num_features": 64}, 16, fp_epochs=100, qat_epochs=40,
                                    patch_size=96, repeat=100),
        },
    ),
}

# Published numbers (ImageNet top-1, %), for the table of full experiments. Not measured here.
PUBLISHED = {
    ("resnet18", "fp"): ("69.76", "torchvision's ResNet18_Weights.IMAGENET1K_V1"),
    ("mobilenet_v2", "fp"): ("71.88", "torchvision's MobileNet_V2_Weights.IMAGENET1K_V1"),
    ("resnet18", "w2a2"): ("67.6", "LSQ, Esser et al. 2019 (ICLR 2020), Table 1"),
    ("resnet18", "w3a3"): ("70.2", "LSQ, Esser et al. 2019 (ICLR 2020), Table 1"),
    ("resnet18", "w4a4"): ("71.1", "LSQ, Esser et al. 2019 (ICLR 2020), Table 1"),
}
