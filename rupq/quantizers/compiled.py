"""The quantizer formula compiled by ``torch.compile``: one code path on every device.

Inductor turns :func:`~rupq.quantizers.fake_quantize.fake_quantize` into C++ loops on the CPU and
Triton kernels on CUDA, fusing the std, the grid and their backward into a few passes over each
tensor. Graphs are compiled on first use with dynamic shapes and kept in inductor's on-disk cache
(``/tmp/torchinductor_$USER``), so a second process starts fast. ``RUPQ_COMPILE=0``, or a machine
where compiling fails (no C++ compiler), runs the same function eagerly after one warning.
"""

import contextlib
import contextvars
import inspect
import os
import warnings

import torch

from rupq.quantizers.fake_quantize import fake_quantize


def _compile_enabled() -> bool:
    setting = os.environ.get("RUPQ_COMPILE", "1").strip().lower()
    if setting in ("0", "false", "no", "off"):
        warnings.warn("RUPQ_COMPILE=0: the quantizers run eagerly (slower; same formula)", stacklevel=3)
        return False
    return True


class CompiledFormula:
    """:func:`fake_quantize` compiled once per process with dynamic shapes; eager after one
    warning when compiling is switched off (``RUPQ_COMPILE=0``) or fails on this machine.

    ``enabled``: ``True`` compiles, ``False`` runs eagerly, ``None`` (default) reads
    ``RUPQ_COMPILE`` on the first call.

    One graph serves every layer, batch and image size; a new one is compiled per kind of call
    (training or no-grad, with or without offset / σ / input gradient, one row or one per
    channel, rows of at most or more than 4096 elements — inductor's CPU reductions differ —,
    a batch of one): a couple of dozen at most, hence the raised recompile limit.
    """

    RECOMPILE_LIMIT = 64

    def __init__(self, enabled: bool | None = None):
        self.compiled = None
        self.enabled = enabled
        self.eager_calls = False

    @contextlib.contextmanager
    def eagerly(self):
        """Within it the formula runs uncompiled: for one-off passes (quantizer initialisation)
        that would otherwise compile graphs used once."""
        previous, self.eager_calls = self.eager_calls, True
        try:
            yield
        finally:
            self.eager_calls = previous

    def __call__(self, *args, **kwargs):
        if self.eager_calls or torch.compiler.is_compiling():  # inside a compiled model: traced into its graph
            return fake_quantize(*args, **kwargs)
        if self.enabled is None:
            self.enabled = _compile_enabled()
        if self.enabled and self.compiled is None:
            self.compiled = torch.compile(fake_quantize, dynamic=True, **_PER_COMPILE_LIMIT)
        if not self.enabled:
            return fake_quantize(*args, **kwargs)
        try:
            # A copy of the caller's context: torch keeps its compiler settings in context variables
            # (per thread), so what the call sets holds for this call only, in whichever thread runs
            # it (nn.DataParallel's replicas run in threads of their own), and the caller's settings
            # stay as they were. A few µs a call; changing torch._dynamo.config around each call
            # instead costs tens of µs (measured ~40), hence torch.compile's own recompile limit.
            return contextvars.copy_context().run(_call_with_settings, self.compiled, self.RECOMPILE_LIMIT, args, kwargs)
        except Exception as error:
            if not _is_compiler_failure(error):
                raise
            self.enabled = False
            warnings.warn(
                f"torch.compile failed ({type(error).__name__}: {str(error).strip().splitlines()[0][:200]}); "
                "the quantizers run eagerly (slower; same formula). Set RUPQ_COMPILE=0 to skip the attempt.",
                stacklevel=2,
            )
            return fake_quantize(*args, **kwargs)


#: torch.compile's own recompile limit (torch 2.12 and later) holds for this compiled function in
#: every thread, without touching dynamo's configuration.
_PER_COMPILE_LIMIT = (
    {"recompile_limit": CompiledFormula.RECOMPILE_LIMIT}
    if "recompile_limit" in inspect.signature(torch.compile).parameters else {}
)


def _settings_per_context() -> bool:
    """Whether torch keeps compiler settings per context (torch 2.14: per thread), rather than per process."""
    config = torch.fx.experimental._config
    before = config.use_duck_shape
    contextvars.copy_context().run(setattr, config, "use_duck_shape", not before)
    per_context = config.use_duck_shape == before
    if not per_context:  # the probe changed it for the process
        config.use_duck_shape = before
    return per_context


_SETTINGS_PER_CONTEXT = _settings_per_context()


def _call_with_settings(compiled, recompile_limit: int, args, kwargs):
    """``compiled(*args, **kwargs)`` with the settings its compiling needs; run in a copy of the
    caller's context, which confines them where torch keeps them per context, and restored after
    the call where it keeps them per process."""
    # Without duck sizing, an image whose height equals its width compiles the same graph as any
    # other (sizes that happen to be equal are not assumed to stay equal). Weights and steps are
    # parameters, whose sizes dynamo takes as fixed by default: one graph per weight shape (99
    # graphs for EfficientNet-B0's training and validation at RUPQ w4a4, 15 with dynamic sizes).
    settings = [(torch.fx.experimental._config, "use_duck_shape", False),
                (torch._dynamo.config, "force_parameter_static_shapes", False)]
    if not _PER_COMPILE_LIMIT:
        limit = max(torch._dynamo.config.recompile_limit, recompile_limit)
        settings.append((torch._dynamo.config, "recompile_limit", limit))
    # Where torch keeps them per context, nothing to restore: the context copy is dropped.
    saved = [] if _SETTINGS_PER_CONTEXT else [(config, name, getattr(config, name)) for config, name, _ in settings]
    for config, name, value in settings:
        setattr(config, name, value)
    try:
        return compiled(*args, **kwargs)
    finally:
        for config, name, value in saved:
            setattr(config, name, value)


def _is_compiler_failure(error: Exception) -> bool:
    from torch._dynamo.exc import BackendCompilerFailed
    from torch._inductor.exc import InvalidCxxCompiler

    return isinstance(error, (BackendCompilerFailed, InvalidCxxCompiler))


#: What the quantizer modules call.
quantize = CompiledFormula()
