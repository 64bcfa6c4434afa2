"""Quantization-aware training from one's own script: ``rupq.quantize``, ``calibrate``, ``param_groups``,
``summary``, ``save``, ``load`` (``rupq.export`` is :func:`rupq.export.export`).

    model = rupq.quantize(model, "rupq_w4a4")          # wraps in place; prints rupq.summary(model)
    groups = rupq.param_groups(model)                  # {"weight": [...], "quant_weight": [...], "quant_input": [...]}
    sgd = torch.optim.SGD(groups["weight"], lr=0.01, momentum=0.9)
    adam = torch.optim.Adam([{"params": groups["quant_weight"], "lr": 1e-5}, {"params": groups["quant_input"], "lr": 1e-3}])
    rupq.calibrate(model, [images])                    # optional: else the first training batch initialises
    ...                                                # your training loop
    rupq.save(model, "model.ckpt")                     # rupq.load("model.ckpt", model) into a model quantized alike
    rupq.export(model, "model.onnx", images[:16])      # ONNX, checked in onnxruntime as `rupq export` checks it

Order: quantize, then build the optimizers (every quantizer parameter exists when quantize
returns), then calibrate or train, wrapping in DistributedDataParallel after quantize.
"""

import copy
from pathlib import Path

import torch
from torch import nn

from rupq.errors import CheckpointError, ConfigError, RupqError
from rupq.quantizers.initialization import initialize_quantizers
from rupq.quantizers.parser import ModelParser
from rupq.quantizers.presets import preset, preset_names
from rupq.quantizers.report import summary
from rupq.quantizers.walk import quantizers_of

#: Bit widths that ``layers`` accepts.
LAYER_BITS = (2, 16)
PARAM_GROUPS = ("weight", "quant_weight", "quant_input")

__all__ = ["calibrate", "load", "param_groups", "presets", "quantize", "save", "summary"]


def presets() -> list[str]:
    """The preset recipe names: ``rupq_w{b}a{b}``, ``lsqplus_w{b}a{b}``, ``lsq_w{b}a{b}`` for b in 2, 3, 4, 8."""
    return preset_names()


def _parser_from_file(path: Path) -> ModelParser:
    from rupq.config import load_config

    config = load_config(path)
    if not any(isinstance(value, ModelParser) for value in config.values()) and "wrappers" in config:
        return _parser_from_dict(config, str(path))
    found = {id(value): value for value in config.values() if isinstance(value, ModelParser)}
    found.update({id(value.model_parser): value.model_parser for value in config.values()
                  if isinstance(getattr(value, "model_parser", None), ModelParser)})
    if len(found) != 1:
        raise ConfigError(
            f"recipe {path}: expected one !ModelParser (or a model_parser mapping with wrappers), found {len(found)}"
        )
    return next(iter(found.values()))


def _parser_from_dict(recipe: dict, where: str) -> ModelParser:
    try:
        return ModelParser(**recipe)
    except TypeError as error:
        raise ConfigError(f"recipe {where}: {error} (expected the keyword arguments of ModelParser)") from None


def _recipe_parser(recipe) -> ModelParser:
    if isinstance(recipe, ModelParser):
        return copy.deepcopy(recipe)  # layers and skip are added to the copy, not to the caller's parser
    if isinstance(recipe, dict):
        return _parser_from_dict(recipe, "dict")
    if isinstance(recipe, (str, Path)):
        if isinstance(recipe, str) and recipe in preset_names():
            return preset(recipe)
        if Path(recipe).suffix in (".yaml", ".yml") or Path(recipe).is_file():
            if not Path(recipe).is_file():
                raise ConfigError(f"recipe file {recipe} does not exist")
            return _parser_from_file(Path(recipe))
        return preset(str(recipe))  # not a file: an unknown preset, reported with the closest names
    raise ConfigError(f"recipe must be a preset name, a YAML file or a model_parser dict, got {type(recipe).__name__}")


def _bits(value, pattern: str, tensor: str) -> int:
    low, high = LAYER_BITS
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        what = f"{tensor} bits" if tensor else "bits"
        raise ConfigError(f"layers['{pattern}']: {what} must be an integer from {low} to {high}, got {value!r}")
    return value


def _layer_bits(layers: dict) -> tuple[dict, dict]:
    """``layers`` as ``({pattern: input bits}, {pattern: weight bits})``."""
    if not isinstance(layers, dict):
        raise ConfigError(f"layers must map layer names or patterns to bits, got {type(layers).__name__}")
    inputs, weights = {}, {}
    for pattern, bits in layers.items():
        if isinstance(bits, dict):
            unknown = set(bits) - {"input", "weight"}
            if unknown or not bits:
                raise ConfigError(f"layers['{pattern}']: expected bits or {{'input': b, 'weight': b}}, got keys {sorted(bits)}")
            if "input" in bits:
                inputs[pattern] = _bits(bits["input"], pattern, "input")
            if "weight" in bits:
                weights[pattern] = _bits(bits["weight"], pattern, "weight")
        else:
            inputs[pattern] = weights[pattern] = _bits(bits, pattern, "")
    return inputs, weights


def quantize(model: nn.Module, recipe, *, layers: dict | None = None, skip=None, verbose: bool = True) -> nn.Module:
    """Wrap ``model``'s ``Conv2d`` / ``Linear`` layers (subclasses included) in place; returns ``model``.

    Args:
        recipe: a preset name (:func:`presets`), a YAML file (a config with a ``model_parser``,
            or a file holding the ``model_parser`` mapping) or a dict of ``ModelParser`` arguments.
        layers: ``{name or pattern: bits}`` or ``{name or pattern: {"input": b, "weight": b}}``,
            bits from 2 to 16, applied after the recipe (over its exceptions and first/last rule).
        skip: names or patterns of layers left in float.
        verbose: print :func:`summary`.

    Every quantizer parameter exists on return; values are set from data by :func:`calibrate`
    or on the first training batch.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"rupq.quantize: model must be a torch.nn.Module, got {type(model).__name__}")
    parser = _recipe_parser(recipe)
    if layers:
        inputs, weights = _layer_bits(layers)
        parser.input_bit_width.override(inputs, "layers")
        parser.weight_bit_width.override(weights, "layers")
    if skip:
        skip = [skip] if isinstance(skip, str) else list(skip)
        if not all(isinstance(pattern, str) for pattern in skip):
            raise ConfigError(f"skip must be layer names or patterns, got {skip!r}")
        parser.skip = parser.skip + skip
    parser.parse(model)
    if verbose:
        print(summary(model), flush=True)
    return model


def _batch_inputs(batch):
    """The model input of a batch: the batch itself, or the first item of an ``(inputs, targets)`` pair."""
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def calibrate(model: nn.Module, batches) -> nn.Module:
    """Initialise every quantizer from data: one training-mode pass over ``batches`` (a tensor,
    or an iterable of tensors or ``(inputs, targets)`` pairs, concatenated into one batch), with
    BatchNorm statistics, RNG and train/eval modes put back (as the first training batch of a run)."""
    quantizers = [quantizer for _, quantizer in quantizers_of(model)]
    if not quantizers:
        raise RupqError("rupq.calibrate: the model has no quantizer; call rupq.quantize first")
    if all(quantizer.initialized for quantizer in quantizers):
        raise RupqError("rupq.calibrate: every quantizer is initialised already (their values stay as they are)")
    tensors = [batches] if isinstance(batches, torch.Tensor) else [_batch_inputs(batch) for batch in batches]
    if not tensors or not all(isinstance(tensor, torch.Tensor) for tensor in tensors):
        raise RupqError("rupq.calibrate: batches must be a tensor or an iterable of tensors / (inputs, targets) pairs")
    device = next(model.parameters()).device
    initialize_quantizers(model, torch.cat(tensors).to(device))
    return model


def param_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """``{"weight", "quant_weight", "quant_input"}`` → the trainable parameters of each group, as
    the configs' optimizers split them (``model_params_type``)."""
    from rupq.tools.training.optimizers import select_parameters

    return {group: select_parameters(model, group) for group in PARAM_GROUPS}


def save(model: nn.Module, path) -> None:
    """Write ``model`` as a run's ``model.ckpt`` (tensors and plain data, written atomically):
    ``rupq.load``, and ``--load`` for a model rupq's registry builds, read it back."""
    from rupq.tools.training.task import model_checkpoint
    from rupq.tools.utils.checkpoint import save_atomic

    save_atomic(model_checkpoint(model), path)


def load(path, model: nn.Module) -> nn.Module:
    """Restore ``path`` (written by :func:`save` or a run) into ``model``, built as when it was saved
    (and, for a quantized checkpoint, quantized with the same recipe); returns ``model``. The
    checks are those of ``--load`` and ``--checkpoint_path``: quantizer settings, then tensors."""
    from rupq.tools.training.task import is_quantized, load_state
    from rupq.tools.utils.checkpoint import MODEL_FORMAT, load_checkpoint

    saved = load_checkpoint(path, MODEL_FORMAT)
    if saved["quantized"] != is_quantized(model):
        held, given = ("a quantized", "a full-precision") if saved["quantized"] else ("a full-precision", "a quantized")
        hint = "quantize it with the recipe it was trained with first" if saved["quantized"] else "load it before rupq.quantize"
        raise CheckpointError(f"{path} holds {held} model but the model given is {given} one: {hint}")
    load_state(model, saved["state_dict"], path, saved.get("quantizers") if saved["quantized"] else None)
    return model
