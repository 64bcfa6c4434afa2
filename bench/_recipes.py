"""Benchmark helpers: the seed recipes' model parsers and the test suite's chain-of-ops oracle.

Recipes are read with the project's config loader, which builds objects but touches no data.
"""

import importlib.util
from pathlib import Path

import rupq.quantizers as quantizers
from rupq.config import load_config

REPOSITORY = Path(__file__).resolve().parents[1]
RECIPES = REPOSITORY / "rupq" / "examples" / "quantized" / "classification"


def recipe_parser(model_name: str, recipe: str) -> quantizers.ModelParser:
    """The ``ModelParser`` of ``rupq/examples/quantized/classification/<model>/<recipe>.yaml``."""
    return load_config(RECIPES / model_name / f"{recipe}.yaml")["model_parser"]


def quantizer_reference():
    """``tests/quantizers/quantizer_reference.py``, the slow oracle the tests check against."""
    path = REPOSITORY / "tests" / "quantizers" / "quantizer_reference.py"
    spec = importlib.util.spec_from_file_location("quantizer_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
