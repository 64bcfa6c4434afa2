"""One-pass CPU kernels for the fused LSQ grid and the standard deviation (a C++ extension).

The torch formulation of :class:`~rupq.quantizers.grid.LsqFakeQuantize` makes one memory pass
per elementwise op (subtract, divide, clamp, round, multiply; masks, products and sums in
backward). These kernels do the same arithmetic in one pass each:

- ``fake_quantize_forward``: ``out = round(clamp((x - o) / c, n, p)) c + o``;
- ``fake_quantize_backward``: ``dL/dx = g m`` together with the per-row sums
  ``Σ g (q - m t)`` and ``Σ g (1 - m)`` the step, σ and offset gradients are made of
  (formulas in :mod:`rupq.quantizers.grid`);
- ``std_forward`` / ``std_backward``: ``mean`` and unbiased ``std`` of ``x - o`` per row, and
  ``dL/dx = dL/dstd (x - o - mean) / ((N - 1) std)`` with its row sums (for the offset);
- ``standardized_rows_forward`` / ``standardized_rows_backward``: the std and the grid together
  for one σ per leading channel (RUPQ's weights), one row at a time, so that each row is read
  from memory once per direction and the second pass over it hits the cache.

A "row" is the whole tensor (scalar parameters) or one leading channel (per-channel
parameters). Rows are cut into fixed chunks summed in a fixed order, so results do not depend
on the thread count. Sums are accumulated in float64.

The extension is compiled with ``torch.utils.cpp_extension.load_inline`` on first use (tens of
seconds, once per machine: torch caches the build under ``~/.cache/torch_extensions``). Only
contiguous float32 CPU tensors use it; anything else, ``RUPQ_NO_CPP_KERNELS=1``, or a build that
fails (a warning, once) keeps the torch formulation.
"""

import hashlib
import logging
import os
import threading
import warnings

import torch

#: Set to 1 to force the torch formulation (checked at every call).
DISABLE_VARIABLE = "RUPQ_NO_CPP_KERNELS"

_SOURCE = r"""
#include <ATen/Parallel.h>
#include <cmath>
#include <vector>

namespace {

// Each vector loop is compiled for AVX-512, AVX2 and baseline x86-64 and picked at load time.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define RUPQ_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define RUPQ_CLONES
#endif

// Elements per parallel task: small enough to spread one activation over the threads, large
// enough that scheduling costs nothing. Fixed, so sums never depend on the thread count.
constexpr int64_t kChunk = 1 << 14;

struct Span {
  int64_t row, begin, count;
};

std::vector<Span> spans(int64_t rows, int64_t cols) {
  std::vector<Span> result;
  for (int64_t row = 0; row < rows; ++row)
    for (int64_t begin = 0; begin < cols; begin += kChunk)
      result.push_back({row, begin, std::min(kChunk, cols - begin)});
  return result;
}

template <typename F>
void for_spans(const std::vector<Span>& all, int64_t cols, const F& f) {
  // Tensors below two chunks stay on the calling thread.
  int64_t grain = std::max<int64_t>(1, (2 * kChunk) / std::max<int64_t>(1, std::min(cols, kChunk)));
  at::parallel_for(0, static_cast<int64_t>(all.size()), grain, [&](int64_t first, int64_t last) {
    for (int64_t k = first; k < last; ++k) f(k, all[k]);
  });
}

// t = (x - o) / c; with no offset o = 0, and x - 0 == x for every float, so one loop serves both.
RUPQ_CLONES
void forward_span(const float* x, float* out, int64_t count, float scale, float offset, float lower, float upper) {
#pragma omp simd
  for (int64_t i = 0; i < count; ++i) {
    float t = (x[i] - offset) / scale;
    float v = t < lower ? lower : (t > upper ? upper : t);
    out[i] = std::rint(v) * scale + offset;
  }
}

// m = 1 strictly inside [n, p], 1/2 on a bound, 0 outside; gx = g m,
// residual += g (q - m v) (v = clamp(t) = t where m != 0), outside += g (1 - m).
RUPQ_CLONES
void backward_span(const float* g, const float* x, float* gx, int64_t count, float scale, float offset, float lower,
                   float upper, double* residual_out, double* outside_out) {
  double residual = 0.0, outside = 0.0;
  if (gx != nullptr) {
#pragma omp simd reduction(+ : residual, outside)
    for (int64_t i = 0; i < count; ++i) {
      float t = (x[i] - offset) / scale;
      float m = 0.5f * (((t > lower && t < upper) ? 1.f : 0.f) + ((t >= lower && t <= upper) ? 1.f : 0.f));
      float v = t < lower ? lower : (t > upper ? upper : t);
      float gm = g[i] * m;
      gx[i] = gm;
      residual += static_cast<double>(g[i] * (std::rint(v) - m * v));
      outside += static_cast<double>(g[i] - gm);
    }
  } else {
#pragma omp simd reduction(+ : residual, outside)
    for (int64_t i = 0; i < count; ++i) {
      float t = (x[i] - offset) / scale;
      float m = 0.5f * (((t > lower && t < upper) ? 1.f : 0.f) + ((t >= lower && t <= upper) ? 1.f : 0.f));
      float v = t < lower ? lower : (t > upper ? upper : t);
      residual += static_cast<double>(g[i] * (std::rint(v) - m * v));
      outside += static_cast<double>(g[i] - g[i] * m);
    }
  }
  *residual_out = residual;
  *outside_out = outside;
}

// Sums of d and d^2 with d = x - o - pivot (the pivot, one element of the row, keeps the
// float64 variance formula away from cancellation when the mean is large against the std).
RUPQ_CLONES
void moments_span(const float* x, int64_t count, float offset, double pivot, double* sum_out, double* squares_out) {
  double sum = 0.0, squares = 0.0;
#pragma omp simd reduction(+ : sum, squares)
  for (int64_t i = 0; i < count; ++i) {
    double d = static_cast<double>(x[i] - offset) - pivot;
    sum += d;
    squares += d * d;
  }
  *sum_out = sum;
  *squares_out = squares;
}

// gx = coefficient (x - o - mean), or gx += it when accumulating (or only the sum, gx null);
// the sum of the added terms.
RUPQ_CLONES
void std_backward_span(const float* x, float* gx, bool accumulate, int64_t count, float offset, float mean,
                       float coefficient, double* sum_out) {
  double sum = 0.0;
  if (gx == nullptr) {
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < count; ++i) sum += static_cast<double>(((x[i] - offset) - mean) * coefficient);
  } else if (accumulate) {
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < count; ++i) {
      float value = ((x[i] - offset) - mean) * coefficient;
      gx[i] += value;
      sum += static_cast<double>(value);
    }
  } else {
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < count; ++i) {
      float value = ((x[i] - offset) - mean) * coefficient;
      gx[i] = value;
      sum += static_cast<double>(value);
    }
  }
  *sum_out = sum;
}

// Per-row parameter: one value for every row (numel 1) or one per row.
float at_row(const float* values, int64_t numel, int64_t row) {
  return values == nullptr ? 0.f : values[numel == 1 ? 0 : row];
}

void check_input(const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.is_contiguous(), name,
              " must be a contiguous float32 CPU tensor");
}

int64_t row_count(const at::Tensor& x, const at::Tensor& a, const c10::optional<at::Tensor>& b) {
  int64_t rows = std::max<int64_t>(a.numel(), b.has_value() ? b->numel() : 1);
  TORCH_CHECK(rows == 1 || (x.dim() > 0 && x.size(0) == rows), "parameters must be scalars or one per leading channel");
  return rows;
}

}  // namespace

at::Tensor fake_quantize_forward(const at::Tensor& x, const at::Tensor& scale, const c10::optional<at::Tensor>& offset,
                                 double lower, double upper) {
  check_input(x, "x");
  check_input(scale, "scale");
  if (offset.has_value()) check_input(*offset, "offset");
  int64_t rows = row_count(x, scale, offset);
  int64_t cols = rows == 0 ? 0 : x.numel() / rows;
  at::Tensor out = at::empty_like(x);
  const float* xp = x.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const float* sp = scale.data_ptr<float>();
  const float* offp = offset.has_value() ? offset->data_ptr<float>() : nullptr;
  int64_t snum = scale.numel(), onum = offset.has_value() ? offset->numel() : 1;
  auto all = spans(rows, cols);
  for_spans(all, cols, [&](int64_t, const Span& s) {
    int64_t start = s.row * cols + s.begin;
    forward_span(xp + start, op + start, s.count, at_row(sp, snum, s.row), at_row(offp, onum, s.row), lower, upper);
  });
  return out;
}

// (dL/dx or an undefined tensor, Σ g (q - m t) per row, Σ g (1 - m) per row)
std::vector<at::Tensor> fake_quantize_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& scale,
                                               const c10::optional<at::Tensor>& offset, double lower, double upper,
                                               bool need_x) {
  check_input(grad, "grad");
  check_input(x, "x");
  check_input(scale, "scale");
  if (offset.has_value()) check_input(*offset, "offset");
  TORCH_CHECK(grad.sizes() == x.sizes(), "grad and x must have the same shape");
  int64_t rows = row_count(x, scale, offset);
  int64_t cols = rows == 0 ? 0 : x.numel() / rows;
  at::Tensor grad_x = need_x ? at::empty_like(x) : at::Tensor();
  const float* gp = grad.data_ptr<float>();
  const float* xp = x.data_ptr<float>();
  float* gxp = need_x ? grad_x.data_ptr<float>() : nullptr;
  const float* sp = scale.data_ptr<float>();
  const float* offp = offset.has_value() ? offset->data_ptr<float>() : nullptr;
  int64_t snum = scale.numel(), onum = offset.has_value() ? offset->numel() : 1;
  auto all = spans(rows, cols);
  std::vector<double> residual(all.size()), outside(all.size());
  for_spans(all, cols, [&](int64_t k, const Span& s) {
    int64_t start = s.row * cols + s.begin;
    backward_span(gp + start, xp + start, gxp == nullptr ? nullptr : gxp + start, s.count, at_row(sp, snum, s.row),
                  at_row(offp, onum, s.row), lower, upper, &residual[k], &outside[k]);
  });
  std::vector<double> residual_rows(rows, 0.0), outside_rows(rows, 0.0);
  for (size_t k = 0; k < all.size(); ++k) {
    residual_rows[all[k].row] += residual[k];
    outside_rows[all[k].row] += outside[k];
  }
  at::Tensor residual_sums = at::empty({rows}, x.options());
  at::Tensor outside_sums = at::empty({rows}, x.options());
  for (int64_t r = 0; r < rows; ++r) {
    residual_sums.data_ptr<float>()[r] = static_cast<float>(residual_rows[r]);
    outside_sums.data_ptr<float>()[r] = static_cast<float>(outside_rows[r]);
  }
  return {grad_x, residual_sums, outside_sums};
}

// (mean, unbiased std) of x - o over each of `rows` rows, float32 [rows].
std::vector<at::Tensor> std_forward(const at::Tensor& x, const c10::optional<at::Tensor>& offset, int64_t rows) {
  check_input(x, "x");
  if (offset.has_value()) check_input(*offset, "offset");
  TORCH_CHECK(rows >= 1 && x.numel() % rows == 0, "rows must divide the tensor");
  int64_t cols = x.numel() / rows;
  const float* xp = x.data_ptr<float>();
  const float* offp = offset.has_value() ? offset->data_ptr<float>() : nullptr;
  int64_t onum = offset.has_value() ? offset->numel() : 1;
  TORCH_CHECK(onum == 1 || onum == rows, "offset must be a scalar or one per row");
  std::vector<double> pivots(rows, 0.0);
  for (int64_t r = 0; r < rows; ++r)
    if (cols > 0) pivots[r] = static_cast<double>(xp[r * cols] - at_row(offp, onum, r));
  auto all = spans(rows, cols);
  std::vector<double> sums(all.size()), squares(all.size());
  for_spans(all, cols, [&](int64_t k, const Span& s) {
    moments_span(xp + s.row * cols + s.begin, s.count, at_row(offp, onum, s.row), pivots[s.row], &sums[k], &squares[k]);
  });
  std::vector<double> row_sums(rows, 0.0), row_squares(rows, 0.0);
  for (size_t k = 0; k < all.size(); ++k) {
    row_sums[all[k].row] += sums[k];
    row_squares[all[k].row] += squares[k];
  }
  at::Tensor mean = at::empty({rows}, x.options());
  at::Tensor std = at::empty({rows}, x.options());
  double count = static_cast<double>(cols);
  for (int64_t r = 0; r < rows; ++r) {
    double deviation_squares = std::max(0.0, row_squares[r] - row_sums[r] * row_sums[r] / count);
    mean.data_ptr<float>()[r] = static_cast<float>(pivots[r] + row_sums[r] / count);
    std.data_ptr<float>()[r] = static_cast<float>(std::sqrt(deviation_squares / (count - 1.0)));
  }
  return {mean, std};
}

// (dL/dx = coefficient_r (x - o - mean_r), its sum per row), coefficient = dL/dstd / ((N - 1) std).
// With `accumulate`, dL/dx is added to that tensor in place (and returned) instead of a new one.
std::vector<at::Tensor> std_backward(const at::Tensor& x, const c10::optional<at::Tensor>& offset, const at::Tensor& mean,
                                     const at::Tensor& coefficient, const c10::optional<at::Tensor>& accumulate) {
  check_input(x, "x");
  check_input(mean, "mean");
  check_input(coefficient, "coefficient");
  if (offset.has_value()) check_input(*offset, "offset");
  int64_t rows = mean.numel();
  TORCH_CHECK(coefficient.numel() == rows && rows >= 1 && x.numel() % rows == 0, "one mean and coefficient per row");
  int64_t cols = x.numel() / rows;
  const float* xp = x.data_ptr<float>();
  const float* offp = offset.has_value() ? offset->data_ptr<float>() : nullptr;
  int64_t onum = offset.has_value() ? offset->numel() : 1;
  TORCH_CHECK(onum == 1 || onum == rows, "offset must be a scalar or one per row");
  const float* mp = mean.data_ptr<float>();
  const float* cp = coefficient.data_ptr<float>();
  bool accumulating = accumulate.has_value();
  if (accumulating) {
    check_input(*accumulate, "accumulate");
    TORCH_CHECK(accumulate->sizes() == x.sizes(), "accumulate and x must have the same shape");
  }
  at::Tensor grad_x = accumulating ? *accumulate : at::empty_like(x);
  float* gxp = grad_x.data_ptr<float>();
  auto all = spans(rows, cols);
  std::vector<double> sums(all.size());
  for_spans(all, cols, [&](int64_t k, const Span& s) {
    int64_t start = s.row * cols + s.begin;
    std_backward_span(xp + start, gxp + start, accumulating, s.count, at_row(offp, onum, s.row), mp[s.row], cp[s.row],
                      &sums[k]);
  });
  std::vector<double> row_sums(rows, 0.0);
  for (size_t k = 0; k < all.size(); ++k) row_sums[all[k].row] += sums[k];
  at::Tensor sums_tensor = at::empty({rows}, x.options());
  for (int64_t r = 0; r < rows; ++r) sums_tensor.data_ptr<float>()[r] = static_cast<float>(row_sums[r]);
  return {grad_x, sums_tensor};
}

// The standardized grid with one σ per leading channel (weights), one row at a time: the
// moments pass leaves the row in cache for the grid pass (and, backward, the grid's pass for
// the std's). Per row r, in float32 as the torch formulation computes them:
//   σ_r = a_r + w max(std_r, ε) (a_r = 0 without an EMA term), c_r = s'_r σ_r, out = grid(x; c_r, o_r).
// Returns {out, mean, std, σ, c}, each but out of shape [rows].
std::vector<at::Tensor> standardized_rows_forward(const at::Tensor& x, const at::Tensor& step,
                                                  const c10::optional<at::Tensor>& offset,
                                                  const c10::optional<at::Tensor>& ema_term, double weight,
                                                  double epsilon, double lower, double upper) {
  check_input(x, "x");
  check_input(step, "step");
  if (offset.has_value()) check_input(*offset, "offset");
  if (ema_term.has_value()) check_input(*ema_term, "ema_term");
  TORCH_CHECK(x.dim() > 1 && x.size(0) > 0, "x must have a leading channel dim");
  int64_t rows = x.size(0), cols = x.numel() / rows;
  TORCH_CHECK(cols > 1, "each row needs two elements for an unbiased std");
  for (const at::Tensor* t : {&step, offset.has_value() ? &*offset : nullptr, ema_term.has_value() ? &*ema_term : nullptr})
    TORCH_CHECK(t == nullptr || t->numel() == 1 || t->numel() == rows, "parameters must be scalars or one per row");
  at::Tensor out = at::empty_like(x);
  auto options = x.options();
  at::Tensor mean = at::empty({rows}, options), std = at::empty({rows}, options), sigma = at::empty({rows}, options),
             scale = at::empty({rows}, options);
  const float* xp = x.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const float* sp = step.data_ptr<float>();
  const float* offp = offset.has_value() ? offset->data_ptr<float>() : nullptr;
  const float* ap = ema_term.has_value() ? ema_term->data_ptr<float>() : nullptr;
  int64_t snum = step.numel(), onum = offset.has_value() ? offset->numel() : 1, anum = ema_term.has_value() ? ema_term->numel() : 1;
  float* meanp = mean.data_ptr<float>();
  float* stdp = std.data_ptr<float>();
  float* sigmap = sigma.data_ptr<float>();
  float* scalep = scale.data_ptr<float>();
  const float w = static_cast<float>(weight), eps = static_cast<float>(epsilon);
  at::parallel_for(0, rows, std::max<int64_t>(1, kChunk / cols), [&](int64_t first, int64_t last) {
    for (int64_t r = first; r < last; ++r) {
      const float* row = xp + r * cols;
      float o = at_row(offp, onum, r);
      double pivot = static_cast<double>(row[0] - o), sum, squares;
      moments_span(row, cols, o, pivot, &sum, &squares);
      double count = static_cast<double>(cols);
      meanp[r] = static_cast<float>(pivot + sum / count);
      stdp[r] = static_cast<float>(std::sqrt(std::max(0.0, squares - sum * sum / count) / (count - 1.0)));
      float batch_std = std::max(stdp[r], eps);
      sigmap[r] = ap == nullptr ? batch_std : ap[anum == 1 ? 0 : r] + w * batch_std;
      scalep[r] = at_row(sp, snum, r) * sigmap[r];
      forward_span(row, op + r * cols, cols, scalep[r], o, lower, upper);
    }
  });
  return {out, mean, std, sigma, scale};
}

// Backward of standardized_rows_forward, one row at a time: the grid's pass
// (gx = g m, Σ g (q - m t), Σ g (1 - m)), then the std's share added in place,
// gx += k_r (x - o - mean_r) with k_r = [std_r >= ε] w s'_r Σ g (q - m t) / (max(std_r, ε) (N - 1)).
// Without need_x only the sums. Returns {gx or undefined, Σ g (q - m t), Σ g (1 - m), Σ k (x - o - mean)}.
std::vector<at::Tensor> standardized_rows_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& step,
                                                   const c10::optional<at::Tensor>& offset, const at::Tensor& mean,
                                                   const at::Tensor& std, const at::Tensor& scale, double weight,
                                                   double epsilon, double lower, double upper, bool need_x) {
  check_input(grad, "grad");
  check_input(x, "x");
  check_input(step, "step");
  if (offset.has_value()) check_input(*offset, "offset");
  TORCH_CHECK(grad.sizes() == x.sizes() && x.dim() > 1, "grad and x must have the same shape, with a leading channel dim");
  int64_t rows = x.size(0), cols = x.numel() / rows;
  TORCH_CHECK(mean.numel() == rows && std.numel() == rows && scale.numel() == rows, "one mean, std and scale per row");
  at::Tensor grad_x = need_x ? at::empty_like(x) : at::Tensor();
  auto options = x.options();
  at::Tensor residual = at::empty({rows}, options), outside = at::empty({rows}, options), std_sums = at::empty({rows}, options);
  const float* gp = grad.data_ptr<float>();
  const float* xp = x.data_ptr<float>();
  float* gxp = need_x ? grad_x.data_ptr<float>() : nullptr;
  const float* sp = step.data_ptr<float>();
  const float* offp = offset.has_value() ? offset->data_ptr<float>() : nullptr;
  int64_t snum = step.numel(), onum = offset.has_value() ? offset->numel() : 1;
  const float* meanp = mean.data_ptr<float>();
  const float* stdp = std.data_ptr<float>();
  const float* scalep = scale.data_ptr<float>();
  float* residualp = residual.data_ptr<float>();
  float* outsidep = outside.data_ptr<float>();
  float* sumsp = std_sums.data_ptr<float>();
  const float w = static_cast<float>(weight), eps = static_cast<float>(epsilon);
  const float count_less_one = static_cast<float>(cols - 1);
  at::parallel_for(0, rows, std::max<int64_t>(1, kChunk / cols), [&](int64_t first, int64_t last) {
    for (int64_t r = first; r < last; ++r) {
      int64_t start = r * cols;
      float o = at_row(offp, onum, r);
      double row_residual, row_outside, row_sum;
      backward_span(gp + start, xp + start, gxp == nullptr ? nullptr : gxp + start, cols, scalep[r], o, lower, upper,
                    &row_residual, &row_outside);
      residualp[r] = static_cast<float>(row_residual);
      outsidep[r] = static_cast<float>(row_outside);
      float grad_std = stdp[r] >= eps ? residualp[r] * at_row(sp, snum, r) * w : 0.f;
      float coefficient = grad_std / (std::max(stdp[r], eps) * count_less_one);
      std_backward_span(xp + start, gxp == nullptr ? nullptr : gxp + start, true, cols, o, meanp[r], coefficient, &row_sum);
      sumsp[r] = static_cast<float>(row_sum);
    }
  });
  return {grad_x, residual, outside, std_sums};
}
"""

_FUNCTIONS = [
    "fake_quantize_forward",
    "fake_quantize_backward",
    "std_forward",
    "std_backward",
    "standardized_rows_forward",
    "standardized_rows_backward",
]

_lock = threading.Lock()
_module = None
_failed = False


def _build():
    # Importing cpp_extension on a CPU-only machine with a CUDA-built torch logs a CUDA_HOME
    # warning that says nothing about a CPU extension.
    extension_logger = logging.getLogger("torch.utils.cpp_extension")
    level = extension_logger.level
    extension_logger.setLevel(logging.ERROR)
    try:
        from torch.utils.cpp_extension import load_inline
    finally:
        extension_logger.setLevel(level)

    # The name carries a hash of the source, so an edited kernel never loads a stale build.
    digest = hashlib.sha1(_SOURCE.encode()).hexdigest()[:10]
    return load_inline(
        name=f"rupq_cpu_kernels_{digest}",
        cpp_sources=_SOURCE,
        functions=_FUNCTIONS,
        extra_cflags=["-O3", "-fopenmp"],
        extra_ldflags=["-fopenmp"],
        verbose=False,
    )


def kernels():
    """The compiled extension, or ``None`` (disabled by :data:`DISABLE_VARIABLE`, or the build failed)."""
    global _module, _failed
    if os.environ.get(DISABLE_VARIABLE, "") not in ("", "0"):
        return None
    if _module is not None or _failed:
        return _module
    with _lock:
        if _module is None and not _failed:
            try:
                _module = _build()
            except Exception as error:  # a missing compiler, headers, ninja...: stay on the torch path
                _failed = True
                # Compiler errors are long: their last line says what failed.
                reason = (str(error).strip().splitlines() or [repr(error)])[-1]
                warnings.warn(
                    f"rupq: the C++ quantizer kernels could not be built ({type(error).__name__}: {reason}); "
                    f"using the slower torch formulation (set {DISABLE_VARIABLE}=1 to skip the build)",
                    RuntimeWarning,
                    stacklevel=3,
                )
    return _module


def _plain(tensor: torch.Tensor) -> bool:
    return tensor.device.type == "cpu" and tensor.dtype == torch.float32


def _per_row(parameter: torch.Tensor, x: torch.Tensor) -> bool:
    """A scalar, or one value per leading channel of ``x`` (shape ``[C, 1, ...]`` or ``[C]``)."""
    if parameter.numel() == 1:
        return True
    return x.dim() > 0 and parameter.numel() == x.shape[0] and parameter.shape[0] == x.shape[0]


def for_tensors(x: torch.Tensor, *parameters: torch.Tensor | None):
    """The extension when it can take ``x`` and ``parameters`` (``None`` entries are skipped), else ``None``."""
    if not (_plain(x) and x.is_contiguous()):
        return None
    for parameter in parameters:
        if parameter is not None and not (_plain(parameter) and _per_row(parameter, x)):
            return None
    return kernels()


def flat(parameter: torch.Tensor | None) -> torch.Tensor | None:
    """A parameter as the contiguous 1-D float32 tensor the kernels take."""
    if parameter is None:
        return None
    return parameter.detach().reshape(-1).contiguous()
