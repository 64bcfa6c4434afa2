"""RUPQ: low-bit quantization-aware training with equalized relative updates of quantization parameters."""

__version__ = "0.1.0"
