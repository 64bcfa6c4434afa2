"""RUPQ: low-bit quantization-aware training with equalized relative updates of quantization parameters.

The Python API (:mod:`rupq.qat`) is imported on first use, so that ``import rupq`` stays light.
"""

__version__ = "0.1.0"

#: Public name -> module that defines it.
_API = {name: "rupq.qat" for name in ("quantize", "calibrate", "param_groups", "summary", "presets", "save", "load")}
_API["export"] = "rupq.export"  # the module of ``rupq export``, whose function export() this is

__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'rupq' has no attribute '{name}'")


def __dir__():
    return sorted(list(globals()) + list(_API))
