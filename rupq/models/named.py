"""Models by name from other libraries: ``torchvision:NAME`` and ``timm:NAME``.

``torchvision:NAME`` is any classification builder of ``torchvision.models`` (``list_models``),
``timm:NAME`` any model of ``timm.create_model`` (timm is optional: ``pip install rupq[timm]``).
Both are built without weights, with the config's ``model_kwargs`` (``num_classes``, …);
``in_chans`` (timm's name for the input channels) also works for torchvision's models, whose stem
is then rebuilt for that many channels.

Pretrained weights (``--load torchvision:NAME`` / ``--load timm:NAME``) come only from the files
these libraries keep on disk once downloaded: nothing here touches the network, so a run never
stalls on a download, and a missing file is one line saying where it was looked for.
"""

import difflib
import os
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.nn as nn

from rupq.errors import CheckpointError, ConfigError

SOURCES = ("torchvision", "timm")


def split_source(arch: str) -> tuple[str, str] | None:
    """``("torchvision" | "timm", NAME)`` for a named model of another library, else None."""
    source, colon, name = arch.partition(":")
    return (source, name) if colon and source in SOURCES else None


def _closest(name: str, known) -> str:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    return f"did you mean {', '.join(close)}?" if close else "none is close"


def _torchvision_names() -> list[str]:
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def is_torchvision_name(name: str) -> bool:
    return name in _torchvision_names()


def _torchvision_builder_name(name: str) -> str:
    known = _torchvision_names()
    if name not in known:
        raise ConfigError(f"unknown model_arch 'torchvision:{name}' (torchvision's classification models, "
                          f"torchvision.models.list_models()); {_closest(name, known)}")
    return name


def _timm():
    try:
        import timm
    except ImportError:
        raise ConfigError("timm: models need timm, which is not installed: pip install 'rupq[timm]' "
                          "(or pip install timm)") from None
    return timm


def _timm_name(name: str) -> str:
    timm = _timm()
    if not timm.is_model(name):  # also accepts a pretrained tag: resnet18d.ra2_in1k
        raise ConfigError(f"unknown model_arch 'timm:{name}' (timm.list_models()); "
                          f"{_closest(name, timm.list_models())}")
    return name


def build_named(source: str, name: str, **kwargs) -> nn.Module:
    """The model ``source:name`` without weights, built with ``kwargs``."""
    if source == "timm":
        return _timm().create_model(_timm_name(name), pretrained=False, **kwargs)
    import torchvision

    in_chans = kwargs.pop("in_chans", None)
    model = torchvision.models.get_model(_torchvision_builder_name(name), weights=None, **kwargs)
    if in_chans is not None:
        _rebuild_stem(model, int(in_chans))
    return model


def _rebuild_stem(model: nn.Module, in_chans: int) -> None:
    """The first convolution (every torchvision classifier's stem) reads ``in_chans`` channels."""
    path, stem = next(((path, module) for path, module in model.named_modules() if isinstance(module, nn.Conv2d)),
                      (None, None))
    if stem is None:
        raise ValueError("in_chans: the model has no Conv2d stem to rebuild")
    if stem.in_channels == in_chans:
        return
    new = nn.Conv2d(in_chans, stem.out_channels, stem.kernel_size, stem.stride, stem.padding, stem.dilation,
                    stem.groups, stem.bias is not None, stem.padding_mode)
    nn.init.kaiming_normal_(new.weight, mode="fan_out")  # torchvision's init of its convs
    parent, _, attribute = path.rpartition(".")
    setattr(model.get_submodule(parent), attribute, new)


def _hub_checkpoint(url: str) -> Path:
    """Where ``torch.hub.load_state_dict_from_url`` keeps the file of ``url`` (``$TORCH_HOME/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def _read_weights(path: Path) -> dict:
    """A state dict from a weights file, without running code (``weights_only``; safetensors as such)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated download, a file that is not weights
        detail = str(error).strip().splitlines()[0][:200] if str(error).strip() else "no details"
        raise CheckpointError(f"cannot read the pretrained weights {path}: {type(error).__name__}: {detail}") from None


def pretrained_state(source: str, name: str) -> tuple[dict, Path]:
    """The published weights of ``source:name`` from the local cache, and the file they came from."""
    if source == "torchvision":
        import torchvision

        weights = torchvision.models.get_model_weights(_torchvision_builder_name(name)).DEFAULT
        candidates = [_hub_checkpoint(weights.url)]
        hint = f"torchvision.models.get_model('{name}', weights='DEFAULT')"
    else:
        timm = _timm()
        config = timm.create_model(_timm_name(name), pretrained=False).pretrained_cfg
        candidates = _timm_cached_files(config)
        hint = f"timm.create_model('{name}', pretrained=True)"
    for path in candidates:
        if path.is_file():
            return _read_weights(path), path
    raise CheckpointError(
        f"--load {source}:{name}: the pretrained weights are not on disk (looked for "
        f"{' and '.join(str(path) for path in candidates) or 'a published file: the model has none'}); "
        f"nothing is downloaded at run time: run {hint} once on a machine with internet and copy the file there"
    )


def _timm_cached_files(config: dict) -> list[Path]:
    """The files timm would download for ``config``, where they lie once downloaded: the Hugging
    Face hub's cache (timm's default source), then torch hub's folder (models with only a URL)."""
    found = []
    if config.get("hf_hub_id"):
        from huggingface_hub import constants, try_to_load_from_cache  # reads the cache only

        repo = config["hf_hub_id"].split("@")[0]
        for filename in [config["hf_hub_filename"]] if config.get("hf_hub_filename") else \
                ["model.safetensors", "pytorch_model.bin"]:
            cached = try_to_load_from_cache(repo, filename)
            found.append(Path(cached) if isinstance(cached, str) else
                         Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}" / "snapshots" / "*" / filename)
    if config.get("url"):
        found.append(_hub_checkpoint(config["url"]))
    return found


def load_pretrained(source: str, name: str) -> nn.Module:
    """``source:name`` as published (ImageNet classes, 3 channels) with its weights from the local cache."""
    state, path = pretrained_state(source, name)
    if source == "timm":
        # timm's own loading adapts a published file to the model (key renames of older files).
        model = _timm().create_model(name, pretrained=True, pretrained_cfg_overlay={"state_dict": state})
    else:
        model = build_named(source, name)
        try:
            model.load_state_dict(state)
        except RuntimeError as error:
            raise CheckpointError(f"{path} does not fit torchvision:{name}: {str(error).splitlines()[0]}") from None
    return model
