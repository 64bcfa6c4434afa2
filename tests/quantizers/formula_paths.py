"""The ``formula`` fixture: the quantizer formula eager, and compiled by ``torch.compile``.

The suite runs eagerly (``RUPQ_COMPILE=0`` in ``conftest.py``: compiling costs tens of seconds
on a 2-core machine); the tests that take this fixture also run the compiled graph, one
:class:`CompiledFormula` shared by the session so that each kind of call compiles once.
"""

import pytest

from rupq.quantizers.compiled import CompiledFormula
from rupq.quantizers.fake_quantize import fake_quantize

COMPILED = CompiledFormula(enabled=True)


@pytest.fixture(params=["eager", "compiled"])
def formula(request):
    return fake_quantize if request.param == "eager" else COMPILED
