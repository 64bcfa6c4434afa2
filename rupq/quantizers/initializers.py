"""Step initializers, applied once on the first tensor a quantizer sees.

Both take the tensor actually quantized (after offset and standardization), the integer range
``[n, p]`` and the step's shape: ``[]`` for one step, or ``[C, 1, ...]`` for one step per
leading channel. Both return a float32 tensor of the step's shape.
"""

import math

import torch

from rupq.errors import ConfigError


def _rows(x: torch.Tensor, step_shape: list[int]) -> torch.Tensor:
    """``x`` as ``[channels, elements]``: one row per step."""
    channels = math.prod(step_shape) if step_shape else 1
    return x.detach().float().reshape(channels, -1)


class MeanStdInitializer:
    """LSQ+: ``s = max(|μ - 3σ|, |μ + 3σ|) / p``, per channel when the step is per channel."""

    def __call__(self, x: torch.Tensor, negative_clip: int, positive_clip: int, step_shape: list[int]) -> torch.Tensor:
        rows = _rows(x, step_shape)
        std, mean = torch.std_mean(rows, dim=1)
        bound = torch.maximum((mean - 3 * std).abs(), (mean + 3 * std).abs())
        return (bound / positive_clip).reshape(step_shape)

    def __repr__(self) -> str:
        return "MeanStdInitializer()"


def candidate_steps(max_abs: torch.Tensor, positive_clip: int, n_iters: int) -> torch.Tensor:
    """``torch.linspace(1e-7, max|x| / p, n_iters)`` for every row at once, shape ``[rows, n_iters]``.

    Same float32 arithmetic as ``torch.linspace`` (start + i·Δ for the first half, end − (N−1−i)·Δ
    for the second, fused multiply-adds), so the candidates are the original's, bit for bit.
    """
    start = torch.tensor(1e-7, dtype=torch.float32, device=max_abs.device)
    end = (max_abs.float() / positive_clip).unsqueeze(1)
    if n_iters == 1:
        return start.expand(end.shape[0], 1).clone()
    delta = (end - start) / (n_iters - 1)
    index = torch.arange(n_iters, device=max_abs.device, dtype=torch.float32).expand(end.shape[0], n_iters)
    delta = delta.expand_as(index)
    # addcmul, like linspace's kernel, fuses the multiply-add (one rounding).
    first_half = torch.addcmul(start.expand_as(index), delta, index)
    second_half = torch.addcmul(end.expand_as(index), delta, (n_iters - 1) - index, value=-1)
    return torch.where(index < n_iters // 2, first_half, second_half)


def _levels_error_squared(sorted_abs: torch.Tensor, prefix: torch.Tensor, steps: torch.Tensor, top_level: int) -> torch.Tensor:
    """``Σ (a - min(round(a/s), K) s)^2`` over each row of non-negative values, for every candidate ``s``.

    ``sorted_abs``: ``[rows, M]`` ascending, float64; ``prefix``: its prefix sums ``A`` with a
    leading 0, ``[rows, M + 1]``. With ``idx_j`` = number of values below the rounding boundary
    ``(j + 1/2) s``: ``Σ k a = Σ_{j<K} (A_M - A[idx_j])`` and ``Σ k^2 = Σ_{j<K} (2j+1)(M - idx_j)``,
    so the error is ``Σ a^2 - 2 s Σ k a + s^2 Σ k^2``, without touching the values per candidate.
    """
    rows, count = sorted_abs.shape
    squares_total = (sorted_abs * sorted_abs).sum(1, keepdim=True)
    if top_level == 0:
        return squares_total.expand(rows, steps.shape[1])
    levels = torch.arange(top_level, device=steps.device, dtype=torch.float64)
    steps64 = steps.double()
    boundaries = (steps64.unsqueeze(2) * (levels + 0.5)).reshape(rows, -1)
    index = torch.searchsorted(sorted_abs, boundaries)
    above_sum = (prefix[:, -1:] - torch.gather(prefix, 1, index)).reshape(rows, -1, top_level).sum(2)
    above_count = ((count - index).double().reshape(rows, -1, top_level) * (2 * levels + 1)).sum(2)
    return squares_total - 2 * steps64 * above_sum + steps64 * steps64 * above_count


def _with_prefix(sorted_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``sorted_values`` in float64 and its prefix sums with a leading 0."""
    as64 = sorted_values.double()
    zero = torch.zeros(as64.shape[0], 1, dtype=torch.float64, device=as64.device)
    return as64, torch.cat([zero, as64.cumsum(1)], 1)


class MinErrorInitializer:
    """Brute-force Lp initialization (LSQ+): the candidate step with the least ``Σ |x - grid(x)|^p``.

    Candidates: ``n_iters`` steps evenly spaced in ``[1e-7, max|x| / p]``, per channel (or for the
    whole tensor). Ties go to the smallest step. Vectorized over channels and candidates: for
    ``p == 2`` the error of every candidate comes in closed form from sorted values and float64
    prefix sums (:func:`_levels_error_squared`); other powers evaluate the grid on chunks of
    candidates.

    Args:
        p: power of the reconstruction error.
        n_iters: number of candidate steps.
    """

    #: Most (rows x candidates x rounding boundaries) searched at once by the closed form;
    #: above it (very high bit widths) direct evaluation is cheaper.
    MAX_CLOSED_FORM_QUERIES = 1 << 24
    #: Elements (rows x candidates x values) evaluated at once by the direct path.
    DIRECT_CHUNK_ELEMENTS = 1 << 24

    def __init__(self, p: float = 2.0, n_iters: int = 300):
        if not float(p) > 0:
            raise ConfigError(f"MinErrorInitializer: p must be positive, got {p}")
        if int(n_iters) < 1:
            raise ConfigError(f"MinErrorInitializer: n_iters must be at least 1, got {n_iters}")
        self.p = float(p)
        self.n_iters = int(n_iters)

    def __repr__(self) -> str:
        return f"MinErrorInitializer(p={self.p}, n_iters={self.n_iters})"

    def errors(self, x: torch.Tensor, negative_clip: int, positive_clip: int, step_shape: list[int]):
        """``(candidates, errors)``, both ``[rows, n_iters]``."""
        rows = _rows(x, step_shape)
        steps = candidate_steps(rows.abs().amax(1), positive_clip, self.n_iters)
        queries = rows.shape[0] * self.n_iters * max(positive_clip, -negative_clip)
        closed_form = self.p == 2.0 and queries <= self.MAX_CLOSED_FORM_QUERIES
        if closed_form:
            # One sort serves both signs: values of the other sign become zeros, which sit on
            # level 0 and add nothing to the error.
            ascending = rows.sort(dim=1).values
            positive, prefix = _with_prefix(ascending.clamp_min(0))
            errors = _levels_error_squared(positive, prefix, steps, positive_clip)
            negative, prefix = _with_prefix(ascending.neg().clamp_min_(0).flip(1))
            errors = errors + _levels_error_squared(negative, prefix, steps, -negative_clip)
        else:
            errors = self._direct_errors(rows, steps, negative_clip, positive_clip)
        return steps, errors

    def _direct_errors(self, rows, steps, negative_clip, positive_clip):
        per_chunk = max(1, self.DIRECT_CHUNK_ELEMENTS // max(1, rows.numel()))
        chunks = []
        for first in range(0, steps.shape[1], per_chunk):
            candidate = steps[:, first : first + per_chunk].unsqueeze(2)
            values = rows.unsqueeze(1)
            quantized = (values / candidate).clamp_(negative_clip, positive_clip).round_().mul_(candidate)
            chunks.append((values - quantized).abs_().double().pow_(self.p).sum(2))
        return torch.cat(chunks, 1)

    def __call__(self, x: torch.Tensor, negative_clip: int, positive_clip: int, step_shape: list[int]) -> torch.Tensor:
        steps, errors = self.errors(x, negative_clip, positive_clip, step_shape)
        best = errors.argmin(1, keepdim=True)
        return steps.gather(1, best).reshape(step_shape)
