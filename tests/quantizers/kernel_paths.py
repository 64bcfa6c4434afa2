"""The ``kernel_path`` fixture: run a test once on the C++ CPU kernels and once on the torch ops.

Import it into a test module (``from kernel_paths import kernel_path``) and mark the tests that
must hold for both paths with ``@pytest.mark.usefixtures("kernel_path")``.
"""

import pytest

from rupq.quantizers import cpu_kernels


@pytest.fixture(params=["cpp", "torch"])
def kernel_path(request, monkeypatch):
    if request.param == "torch":
        monkeypatch.setenv(cpu_kernels.DISABLE_VARIABLE, "1")
    else:
        monkeypatch.delenv(cpu_kernels.DISABLE_VARIABLE, raising=False)
        if cpu_kernels.kernels() is None:
            pytest.skip("the C++ CPU kernels could not be built on this machine")
    return request.param
