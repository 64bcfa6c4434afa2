"""``!CosineDecay``: a learning-rate factor for ``LambdaLR`` (called with the iteration)."""

import math


class CosineDecay:
    """Warm-up for ``warmup_steps`` iterations, then cosine from ``initial_value`` to ``final_value``.

    ``warmup_mode: linear`` ramps the factor from 0 to ``initial_value``; ``zero`` holds it at 0
    (the parameters do not move) until warm-up ends. After ``warmup_steps + decay_steps`` the
    factor stays at ``final_value``.
    """

    def __init__(
        self,
        initial_value: float = 1.0,
        final_value: float = 0.0,
        warmup_steps: int = 0,
        warmup_mode: str = "linear",
        decay_steps: int = 1,
    ):
        if warmup_mode not in ("linear", "zero"):
            raise ValueError(f"warmup_mode must be 'linear' or 'zero', got {warmup_mode!r}")
        if warmup_steps < 0 or decay_steps < 1:
            raise ValueError(f"need warmup_steps >= 0 and decay_steps >= 1, got {warmup_steps} and {decay_steps}")
        self.initial_value, self.final_value = initial_value, final_value
        self.warmup_steps, self.warmup_mode, self.decay_steps = warmup_steps, warmup_mode, decay_steps

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.initial_value * step / self.warmup_steps if self.warmup_mode == "linear" else 0.0
        progress = min((step - self.warmup_steps) / self.decay_steps, 1.0)
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.final_value + (self.initial_value - self.final_value) * cosine
