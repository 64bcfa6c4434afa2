"""Optimizers and their per-iteration schedulers from the config's ``optimizers`` mapping.

Each entry is ``{name, model_params_type, params, scheduler: {name, params}}``. Parameters are
split by the module that holds them: those of a wrapped layer's input quantizer (its
``ModuleQuantizer.input_quantizer``) → ``quant_input``, of its weight quantizer → ``quant_weight``,
everything else → ``weight``; ``quant`` is both quantizer groups and ``all`` everything.
"""

import difflib
import inspect

import torch
import torch.nn as nn

from rupq.errors import ConfigError
from rupq.quantizers import ModuleQuantizer

PARAM_TYPES = ("all", "weight", "quant", "quant_input", "quant_weight")


def parameter_types(model: nn.Module) -> dict[int, str]:
    """``id(parameter)`` → ``"quant_input"`` / ``"quant_weight"`` for the quantizers' parameters
    (by module type, so that no parameter name can land in the wrong group); others are ``"weight"``."""
    types = {}
    for module in model.modules():
        if isinstance(module, ModuleQuantizer):
            for group, quantizer in (("quant_input", module.input_quantizer), ("quant_weight", module.weight_quantizer)):
                for parameter in quantizer.parameters() if quantizer is not None else ():
                    types[id(parameter)] = group
    return types


def select_parameters(model: nn.Module, params_type: str) -> list[nn.Parameter]:
    wanted = {
        "all": {"weight", "quant_input", "quant_weight"},
        "weight": {"weight"},
        "quant": {"quant_input", "quant_weight"},
        "quant_input": {"quant_input"},
        "quant_weight": {"quant_weight"},
    }[params_type]
    types = parameter_types(model)
    return [p for p in model.parameters() if p.requires_grad and types.get(id(p), "weight") in wanted]


def _lookup(module, name, kind: str, where: str, line: str | None = None):
    cls = getattr(module, str(name), None) if isinstance(name, str) else None
    if not (inspect.isclass(cls)):
        known = [n for n, c in vars(module).items() if inspect.isclass(c) and not n.startswith("_")]
        close = difflib.get_close_matches(str(name), known, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"{where}: unknown {kind} '{name}'{hint}", line)
    return cls


def _construct(cls, args: dict, what: str, line: str | None = None):
    if not isinstance(args, dict):
        raise ConfigError(f"{what}: params must be a mapping, got {type(args).__name__}", line)
    try:
        return cls(**args)
    except (TypeError, ValueError, KeyError) as error:
        raise ConfigError(f"{what}: {error}", line) from None


def build_optimizers(model: nn.Module, spec, locations: dict[str, str] | None = None) -> dict[str, tuple]:
    """``{name: (optimizer, scheduler or None)}`` in config order.

    ``locations`` maps keys of ``spec`` (``""`` for the mapping itself, ``"sgd"``, ``"sgd.name"``,
    ``"sgd.scheduler.params"`` …) to their ``file:line`` (:func:`rupq.config_locations.argument_locations`);
    an error is reported at the most precise one known.
    """
    line = _line_of(locations or {})
    if not spec:
        raise ConfigError("task has no optimizers; add an `optimizers:` mapping to !Task", line())
    if not isinstance(spec, dict):
        raise ConfigError(f"optimizers must be a mapping of name -> optimizer, got {type(spec).__name__}", line())
    built = {}
    for name, entry in spec.items():
        _check_entry(name, entry, line)
        where = f"optimizer '{name}'"
        cls = _lookup(torch.optim, entry["name"], "optimizer", where, line(f"{name}.name", f"{name}"))
        params = _parameter_group(model, name, entry.get("model_params_type", "all"), line)
        optimizer = _construct(
            lambda **kw: cls(params, **kw), entry.get("params") or {}, f"{where} ({entry['name']})",
            line(f"{name}.params", f"{name}"),
        )
        built[name] = (optimizer, _scheduler(optimizer, name, entry.get("scheduler"), line))
    return built


def _line_of(locations: dict[str, str]):
    """``line(*keys)``: the location of the first of ``keys`` known, else of the whole mapping."""

    def line(*keys: str) -> str | None:
        for key in keys:
            if key in locations:
                return locations[key]
        return locations.get("")

    return line


def _check_entry(name: str, entry, line) -> None:
    """An optimizer entry is a mapping with a ``name`` and no keys but the four known."""
    where = f"optimizer '{name}'"
    if not isinstance(entry, dict):
        raise ConfigError(
            f"{where}: expected a mapping with name/params/scheduler, got {type(entry).__name__}", line(f"{name}")
        )
    unknown = set(entry) - {"name", "model_params_type", "params", "scheduler"}
    if unknown:
        raise ConfigError(
            f"{where}: unexpected key '{sorted(unknown)[0]}'; accepted: name, model_params_type, params, scheduler",
            line(f"{name}.{sorted(unknown)[0]}", f"{name}"),
        )
    if "name" not in entry:
        raise ConfigError(f"{where}: missing 'name' (a torch.optim class such as SGD or Adam)", line(f"{name}"))


def _parameter_group(model: nn.Module, name: str, params_type, line) -> list[nn.Parameter]:
    """The parameters an entry's ``model_params_type`` selects; an error when it is unknown or selects none."""
    where = f"optimizer '{name}'"
    if params_type not in PARAM_TYPES:
        close = difflib.get_close_matches(str(params_type), PARAM_TYPES, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise ConfigError(
            f"{where}: unknown model_params_type '{params_type}'{hint} (accepted: {', '.join(PARAM_TYPES)})",
            line(f"{name}.model_params_type", f"{name}"),
        )
    params = select_parameters(model, params_type)
    if not params:
        raise ConfigError(
            f"{where}: model_params_type '{params_type}' selects no parameters of this model"
            + (" (is the model quantized? add a model_parser)" if params_type.startswith("quant") else ""),
            line(f"{name}.model_params_type", f"{name}"),
        )
    return params


def _scheduler(optimizer, name: str, scheduler_spec, line):
    """The per-iteration scheduler of an entry's ``scheduler: {name, params}``, or None without one."""
    if not scheduler_spec:
        return None
    where = f"optimizer '{name}'"
    if not isinstance(scheduler_spec, dict) or "name" not in scheduler_spec:
        raise ConfigError(f"{where}: scheduler must be a mapping with a 'name'", line(f"{name}.scheduler"))
    scheduler_cls = _lookup(
        torch.optim.lr_scheduler, scheduler_spec["name"], "scheduler", where,
        line(f"{name}.scheduler.name", f"{name}.scheduler"),
    )
    return _construct(
        lambda **kw: scheduler_cls(optimizer, **kw),
        scheduler_spec.get("params") or {},
        f"{where} scheduler ({scheduler_spec['name']})",
        line(f"{name}.scheduler.params", f"{name}.scheduler"),
    )
