"""Benchmark helpers: the seed recipes' model parsers and the test suite's chain-of-ops oracle.

Only the ``model_parser`` section of a recipe is built (with ``rupq.quantizers`` tags); other
tags stay plain mappings, so no dataset or training object is created.
"""

import importlib.util
from pathlib import Path

import yaml

import rupq.quantizers as quantizers

REPOSITORY = Path(__file__).resolve().parents[1]
RECIPES = REPOSITORY / "rupq" / "examples" / "quantized" / "classification"


class _QuantizerTagLoader(yaml.SafeLoader):
    pass


def _construct(loader, tag_suffix, node):
    arguments = loader.construct_mapping(node, deep=True) if isinstance(node, yaml.MappingNode) else {}
    if tag_suffix in quantizers.__all__:
        return getattr(quantizers, tag_suffix)(**arguments)
    return arguments


_QuantizerTagLoader.add_multi_constructor("!", _construct)


def recipe_parser(model_name: str, recipe: str) -> quantizers.ModelParser:
    """The ``ModelParser`` of ``rupq/examples/quantized/classification/<model>/<recipe>.yaml``."""
    path = RECIPES / model_name / f"{recipe}.yaml"
    return yaml.load(path.read_text(), Loader=_QuantizerTagLoader)["model_parser"]


def quantizer_reference():
    """``tests/quantizers/quantizer_reference.py``, the slow oracle the tests check against."""
    path = REPOSITORY / "tests" / "quantizers" / "quantizer_reference.py"
    spec = importlib.util.spec_from_file_location("quantizer_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
