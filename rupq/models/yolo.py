"""YOLO-v3 built from a Darknet ``.cfg`` file, and Darknet ``.weights`` loading.

Every ``[section]`` of the cfg after ``[net]`` becomes one entry of ``module_list`` (an
``nn.Sequential``) whose children are named after the section's index, as in the Darknet ports
the original RUPQ configs were written for: ``module_list.0.conv_0``, ``module_list.0.batch_norm_0``,
``module_list.0.leaky_0``, ``module_list.82.yolo_82`` … Supported sections: ``convolutional``
(optional BatchNorm; ``leaky``, ``mish``, ``relu``, ``logistic`` or ``linear`` activation),
``shortcut``, ``route``, ``upsample``, ``maxpool`` and ``yolo``.

In training mode the model returns one raw tensor per ``yolo`` layer, shaped
``[batch, anchors, grid_y, grid_x, 5 + classes]`` (what :class:`~rupq.tools.losses.YOLOLoss`
needs); in eval mode it returns the decoded detections of all layers concatenated,
``[batch, boxes, 5 + classes]`` with ``cx, cy, w, h`` in input pixels, then objectness and class
probabilities.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from rupq.errors import CheckpointError, ConfigError
from rupq.models import register_model

CFG_FOLDER = Path(__file__).with_name("cfg")
SECTION_TYPES = ("convolutional", "shortcut", "route", "upsample", "maxpool", "yolo")


def cfg_path(cfg: str | Path) -> Path:
    """A cfg file path, or the name of a file shipped in ``rupq/models/cfg`` (``yolov3``, ``yolov3-tiny-demo``)."""
    path = Path(cfg)
    if path.is_file():
        return path
    shipped = CFG_FOLDER / (path.name if path.suffix == ".cfg" else f"{path.name}.cfg")
    if shipped.is_file():
        return shipped
    known = ", ".join(sorted(p.stem for p in CFG_FOLDER.glob("*.cfg")))
    raise ConfigError(f"Darknet cfg '{cfg}' is neither a file nor a shipped cfg (shipped: {known})")


def parse_cfg(path: str | Path) -> list[dict]:
    """The sections of a Darknet cfg as dicts of strings, ``{"type": name, key: value, ...}``.

    The first section must be ``[net]``; ``#`` starts a comment.
    """
    path = Path(path)
    sections: list[dict] = []
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise ConfigError(f"malformed section header {line!r}", f"{path}:{number}")
            sections.append({"type": line[1:-1].strip(), "line": number})
        elif "=" in line and sections:
            key, value = line.split("=", 1)
            sections[-1][key.strip()] = value.strip()
        else:
            raise ConfigError(f"expected '[section]' or 'key=value', got {line!r}", f"{path}:{number}")
    if not sections or sections[0]["type"] != "net":
        raise ConfigError("a Darknet cfg starts with a [net] section", str(path))
    for section in sections[1:]:
        if section["type"] not in SECTION_TYPES:
            raise ConfigError(
                f"unsupported section [{section['type']}] (supported: {', '.join(SECTION_TYPES)})",
                f"{path}:{section['line']}",
            )
    return sections


class YOLOLayer(nn.Module):
    """One detection scale: ``len(anchors)`` boxes per cell of a ``stride``-pixel grid.

    Decoding (eval mode), for the raw outputs ``t`` of cell ``(i, j)`` and anchor ``(a_w, a_h)``:
    ``cx = (σ(t_x) + i)·stride``, ``cy = (σ(t_y) + j)·stride``, ``w = a_w·exp(t_w)``,
    ``h = a_h·exp(t_h)``, objectness ``σ(t_o)`` and class probabilities ``σ(t_c)``.
    """

    def __init__(self, anchors: list[tuple[float, float]], num_classes: int, stride: int):
        super().__init__()
        self.num_anchors = len(anchors)
        self.num_classes = num_classes
        self.num_outputs = num_classes + 5
        self.stride = stride  # fixed by the architecture: the product of the downsampling factors
        # Anchors in input pixels, shape [anchors, 2]; a buffer so that it follows .to(device).
        self.register_buffer("anchors", torch.tensor(anchors, dtype=torch.float32), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, grid_y, grid_x = x.shape
        x = x.view(batch, self.num_anchors, self.num_outputs, grid_y, grid_x).permute(0, 1, 3, 4, 2).contiguous()
        if self.training:
            return x
        ys, xs = torch.meshgrid(
            torch.arange(grid_y, device=x.device, dtype=x.dtype),
            torch.arange(grid_x, device=x.device, dtype=x.dtype),
            indexing="ij",
        )
        grid = torch.stack((xs, ys), dim=-1)  # [grid_y, grid_x, 2]
        anchor_wh = self.anchors.to(x.dtype).view(1, self.num_anchors, 1, 1, 2)
        xy = (x[..., 0:2].sigmoid() + grid) * self.stride
        wh = torch.exp(x[..., 2:4]) * anchor_wh
        decoded = torch.cat((xy, wh, x[..., 4:].sigmoid()), dim=-1)
        return decoded.view(batch, -1, self.num_outputs)

    def extra_repr(self) -> str:
        return f"anchors={self.anchors.tolist()}, num_classes={self.num_classes}, stride={self.stride}"


def _activation(name: str, index: int, where: str) -> tuple[str, nn.Module] | None:
    if name == "leaky":
        return f"leaky_{index}", nn.LeakyReLU(0.1)
    if name == "mish":
        return f"mish_{index}", nn.Mish()
    if name == "relu":
        return f"relu_{index}", nn.ReLU()
    if name == "logistic":
        return f"sigmoid_{index}", nn.Sigmoid()
    if name == "linear":
        return None
    raise ConfigError(f"unsupported activation '{name}'", where)


def _layer_index(value: str, current: int, count: int, where: str) -> int:
    """A route/shortcut reference (negative: relative to ``current``) as an absolute index."""
    index = int(value)
    absolute = current + index if index < 0 else index
    if not 0 <= absolute < current:
        raise ConfigError(f"layer reference {index} of section {current} points outside 0..{current - 1}", where)
    return absolute


@dataclass
class Layout:
    """What a section's block is built from: the output channels and strides of the sections
    before it (``channels[i + 1]`` / ``strides[i + 1]`` for section ``i``, the input first)."""

    channels: list[int]
    strides: list[int]
    count: int   # sections in the cfg, for relative layer indices
    where: str   # file:line of the section, for errors


def _convolutional(section, index, layout):
    batch_norm = int(section.get("batch_normalize", 0))
    filters, size = int(section["filters"]), int(section["size"])
    conv_stride = int(section.get("stride", 1))
    padding = (size - 1) // 2 if int(section.get("pad", 0)) else 0
    block = nn.Sequential()
    block.add_module(f"conv_{index}",
                     nn.Conv2d(layout.channels[-1], filters, size, conv_stride, padding, bias=not batch_norm))
    if batch_norm:
        block.add_module(f"batch_norm_{index}", nn.BatchNorm2d(filters, momentum=0.1, eps=1e-5))
    activation = _activation(section.get("activation", "linear"), index, layout.where)
    if activation is not None:
        block.add_module(*activation)
    return block, [], filters, layout.strides[-1] * conv_stride


def _maxpool(section, index, layout):
    size, pool_stride = int(section["size"]), int(section.get("stride", 1))
    block = nn.Sequential()
    if size == 2 and pool_stride == 1:
        # Darknet pads right/bottom so that a 2×2 stride-1 pool keeps the size.
        block.add_module(f"_debug_padding_{index}", nn.ZeroPad2d((0, 1, 0, 1)))
    block.add_module(f"maxpool_{index}", nn.MaxPool2d(size, pool_stride, padding=(size - 1) // 2))
    return block, [], layout.channels[-1], layout.strides[-1] * pool_stride


def _upsample(section, index, layout):
    factor = int(section.get("stride", 2))
    block = nn.Sequential()
    block.add_module(f"upsample_{index}", nn.Upsample(scale_factor=factor, mode="nearest"))
    return block, [], layout.channels[-1], layout.strides[-1] // factor


def _route(section, index, layout):
    sources = [_layer_index(value, index, layout.count, layout.where) for value in section["layers"].split(",")]
    if len({layout.strides[source + 1] for source in sources}) != 1:
        raise ConfigError(f"route {index} concatenates layers of different resolutions", layout.where)
    block = nn.Sequential()
    block.add_module(f"route_{index}", nn.Identity())
    return block, sources, sum(layout.channels[source + 1] for source in sources), layout.strides[sources[0] + 1]


def _shortcut(section, index, layout):
    sources = [_layer_index(section["from"], index, layout.count, layout.where)]
    in_channels = layout.channels[-1]
    if layout.channels[sources[0] + 1] != in_channels:
        raise ConfigError(f"shortcut {index} adds {layout.channels[sources[0] + 1]} to {in_channels} channels", layout.where)
    block = nn.Sequential()
    block.add_module(f"shortcut_{index}", nn.Identity())
    return block, sources, in_channels, layout.strides[-1]


def _yolo(section, index, layout):
    values = [float(v) for v in section["anchors"].split(",") if v.strip()]
    anchors = list(zip(values[0::2], values[1::2]))
    mask = [int(v) for v in section.get("mask", ",".join(map(str, range(len(anchors))))).split(",")]
    classes, in_channels = int(section["classes"]), layout.channels[-1]
    if in_channels != (classes + 5) * len(mask):
        raise ConfigError(
            f"yolo {index} expects (classes + 5) × {len(mask)} = {(classes + 5) * len(mask)} "
            f"input channels, the layer before gives {in_channels}", layout.where
        )
    block = nn.Sequential()
    block.add_module(f"yolo_{index}", YOLOLayer([anchors[m] for m in mask], classes, layout.strides[-1]))
    return block, [], in_channels, layout.strides[-1]


#: Section type -> ``(section, index, layout) -> (block, layers it reads, out channels, stride)``.
SECTION_BUILDERS = {"convolutional": _convolutional, "maxpool": _maxpool, "upsample": _upsample,
                    "route": _route, "shortcut": _shortcut, "yolo": _yolo}


class Darknet(nn.Module):
    """A Darknet network described by a cfg file (see the module docstring).

    ``num_classes`` overrides the ``classes`` of every ``yolo`` section and the ``filters`` of the
    convolution before it (``(classes + 5) × anchors``). ``image_size`` (default: the ``[net]``
    width) is the input size the model is meant for; inputs must be multiples of ``max_stride``.
    """

    def __init__(self, cfg: str | Path, num_classes: int | None = None, image_size: int | None = None):
        super().__init__()
        path = cfg_path(cfg)
        self.cfg_file = str(path)
        self.sections = parse_cfg(path)
        net = self.sections[0]
        self.image_size = int(image_size or net.get("width", 416))
        self.module_list = nn.ModuleList()
        self.sources: list[list[int]] = []  # for route/shortcut sections: the layers they read
        channels = [int(net.get("channels", 3))]  # channels[i + 1] = output channels of section i
        strides = [1]  # strides[i + 1] = downsampling factor of section i's output
        sections = self.sections[1:]
        if num_classes is not None:
            self._override_classes(sections, num_classes, path)
        for index, section in enumerate(sections):
            where = f"{path}:{section['line']}"
            try:
                block, sources, out_channels, stride = SECTION_BUILDERS[section["type"]](
                    section, index, Layout(channels, strides, len(sections), where))
            except KeyError as missing:
                raise ConfigError(f"[{section['type']}] section {index} lacks {missing.args[0]}=", where) from None
            except ValueError as error:
                raise ConfigError(f"[{section['type']}] section {index}: {error}", where) from None
            self.module_list.append(block)
            self.sources.append(sources)
            channels.append(out_channels)
            strides.append(stride)
        if not self.yolo_layers:
            raise ConfigError("the cfg has no [yolo] section", str(path))
        self.num_classes = self.yolo_layers[0].num_classes
        self.max_stride = max(layer.stride for layer in self.yolo_layers)
        if self.image_size % self.max_stride:
            raise ConfigError(f"image_size {self.image_size} is not a multiple of the largest stride {self.max_stride}")
        # Outputs a later route/shortcut reads; all others are dropped as soon as they are used.
        self._kept = {s for sources in self.sources for s in sources}

    @property
    def yolo_layers(self) -> list[YOLOLayer]:
        return [block[0] for block in self.module_list if isinstance(block[0], YOLOLayer)]

    @staticmethod
    def _override_classes(sections: list[dict], num_classes: int, path: Path) -> None:
        if num_classes < 1:
            raise ConfigError(f"num_classes must be at least 1, got {num_classes}")
        for index, section in enumerate(sections):
            if section["type"] != "yolo":
                continue
            if "mask" in section:
                anchors_used = len(section["mask"].split(","))
            else:
                anchors_used = len([v for v in section.get("anchors", "").split(",") if v.strip()]) // 2
            section["classes"] = str(num_classes)
            previous = sections[index - 1]
            if previous["type"] != "convolutional":
                raise ConfigError(f"cannot override classes: yolo {index} does not follow a convolution", str(path))
            previous["filters"] = str((num_classes + 5) * anchors_used)

    def forward(self, x: torch.Tensor):
        outputs: dict[int, torch.Tensor] = {}
        detections = []
        for index, (block, sources) in enumerate(zip(self.module_list, self.sources)):
            kind = self.sections[index + 1]["type"]
            if kind == "route":
                x = torch.cat([x if s == index - 1 else outputs[s] for s in sources], dim=1)
            elif kind == "shortcut":
                x = x + outputs[sources[0]]
            elif kind == "yolo":
                x = block(x)
                detections.append(x)
            else:
                x = block(x)
            if index in self._kept:
                outputs[index] = x
        return detections if self.training else torch.cat(detections, dim=1)


def load_darknet_weights(model: Darknet, path: str | Path) -> None:
    """Load a Darknet ``.weights`` file into ``model`` (built from the matching cfg).

    The file is a header (``major, minor, revision`` as int32, then the number of images seen:
    int64 when ``major·10 + minor ≥ 2``, int32 before) followed by float32 blobs, one per
    convolution in cfg order: BatchNorm ``bias, weight, running_mean, running_var`` then the
    convolution weight when the layer has BatchNorm, otherwise the convolution ``bias, weight``.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            version = np.fromfile(handle, dtype=np.int32, count=3)
            if version.size < 3:
                raise CheckpointError(f"{path} is too short to be a Darknet weights file")
            major, minor = int(version[0]), int(version[1])
            seen_type = np.int64 if major * 10 + minor >= 2 and major < 1000 and minor < 1000 else np.int32
            np.fromfile(handle, dtype=seen_type, count=1)
            weights = np.fromfile(handle, dtype=np.float32)
    except OSError as error:
        raise CheckpointError(f"cannot read Darknet weights {path}: {error.strerror or error}") from None
    tensors = []
    for block in model.module_list:
        conv = next((m for m in block if isinstance(m, nn.Conv2d)), None)
        if conv is None:
            continue
        bn = next((m for m in block if isinstance(m, nn.BatchNorm2d)), None)
        if bn is not None:
            tensors += [bn.bias, bn.weight, bn.running_mean, bn.running_var]
        else:
            tensors.append(conv.bias)
        tensors.append(conv.weight)
    expected = sum(t.numel() for t in tensors)
    if weights.size != expected:
        raise CheckpointError(
            f"{path} holds {weights.size} weights after its header, the model of {Path(model.cfg_file).name} "
            f"needs {expected}: wrong cfg, wrong num_classes or a truncated file"
        )
    offset = 0
    with torch.no_grad():
        for tensor in tensors:
            blob = torch.from_numpy(weights[offset : offset + tensor.numel()].copy())
            tensor.copy_(blob.view_as(tensor))
            offset += tensor.numel()


def save_darknet_weights(model: Darknet, path: str | Path, seen: int = 0) -> None:
    """Write ``model`` as a Darknet ``.weights`` file (version 0.2.0), the inverse of :func:`load_darknet_weights`."""
    with open(path, "wb") as handle:
        np.array([0, 2, 0], dtype=np.int32).tofile(handle)
        np.array([seen], dtype=np.int64).tofile(handle)
        for block in model.module_list:
            conv = next((m for m in block if isinstance(m, nn.Conv2d)), None)
            if conv is None:
                continue
            bn = next((m for m in block if isinstance(m, nn.BatchNorm2d)), None)
            tensors = [bn.bias, bn.weight, bn.running_mean, bn.running_var] if bn is not None else [conv.bias]
            for tensor in tensors + [conv.weight]:
                tensor.detach().cpu().float().numpy().tofile(handle)


@register_model
def yolo_v3(cfg: str = "yolov3", num_classes: int | None = None, image_size: int | None = None) -> nn.Module:
    """YOLO-v3 from a Darknet cfg (a path or a shipped name; default: the standard 80-class YOLO-v3)."""
    return Darknet(cfg, num_classes, image_size)


@register_model
def yolo_v3_tiny_demo(num_classes: int | None = None, image_size: int | None = None) -> nn.Module:
    """A narrow two-scale YOLO-v3-tiny (``cfg/yolov3-tiny-demo.cfg``) small enough to train on a CPU."""
    return Darknet("yolov3-tiny-demo", num_classes, image_size)
