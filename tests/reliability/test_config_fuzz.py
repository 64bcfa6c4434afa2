"""Fuzzing the config loader: mutated example configs either load or raise a RupqError.

A seeded generator applies one to three mutations to each example config (delete, duplicate or
swap lines, change indentation, replace a scalar by a value of another type, rename a tag,
truncate, insert YAML punctuation) and feeds the result to ``rupq.config.load_config``. Any
other exception type would reach the user as a traceback instead of a one-line error.
"""

import random
import re
import traceback

from conftest import REPO
from rupq.config import load_config
from rupq.errors import RupqError

EXAMPLES = sorted((REPO / "rupq" / "examples").rglob("*.yaml"))
MUTANTS = 720
SCALAR = re.compile(r"^(\s*(?:- )?[\w.]+:\s+)([^\s&*!{\[#][^#]*?)\s*$")
TAG = re.compile(r"!(\w+)")
REPLACEMENTS = [
    "ten", "'3'", "-1", "0", "1e400", "-.inf", ".nan", "[1, 2]", "{a: 1}", "~", "true", "2024-13-45",
    "!!float abc", "!!int 12x", "!!binary ???", "99999999999999999999999", "0x1F", "0o17", "1_000", "[]", "{}",
    "*nowhere", "!Accuracy", "!Task", "\"\\x\"", "'", "{", "[", "a: b: c", "&a [*a]", "!!python/object:os.system x",
]
TAG_NAMES = ["Acuracy", "task", "TASK", "ModelParse", "Conv2d", "Linear", "SGD", "StepLR", "Tensor", "Module",
             "object", "", "ReLU", "Sequential", "DataLoader", "Accuracy", "PSNR", "Task", "TrainingLoop"]
NOISE = ["&x", "*x", ": ", "- ", "\t", "%YAML 1.1", "---", "...", "? [a]", "<<: *dataset", "!", "|", ">", "@", "`"]


def mutate(text: str, rng: random.Random) -> str:
    lines = text.splitlines()
    kind = rng.randrange(9)
    i = rng.randrange(len(lines))
    if kind == 0:
        del lines[i]
    elif kind == 1:
        lines.insert(i, lines[i])
    elif kind == 2:
        j = rng.randrange(len(lines))
        lines[i], lines[j] = lines[j], lines[i]
    elif kind == 3:
        stripped = lines[i].lstrip(" ")
        indent = len(lines[i]) - len(stripped)
        lines[i] = " " * max(0, indent + rng.choice([-4, -2, -1, 1, 2, 4])) + stripped
    elif kind == 4:
        candidates = [n for n, line in enumerate(lines) if SCALAR.match(line)]
        if candidates:
            n = rng.choice(candidates)
            lines[n] = SCALAR.sub(lambda m: m.group(1) + rng.choice(REPLACEMENTS), lines[n])
    elif kind == 5:
        candidates = [n for n, line in enumerate(lines) if TAG.search(line)]
        if candidates:
            n = rng.choice(candidates)
            lines[n] = TAG.sub(lambda m: "!" + rng.choice(TAG_NAMES + [m.group(1).lower(), m.group(1)[:-1]]),
                               lines[n], count=1)
    elif kind == 6:
        return text[: rng.randrange(len(text))]
    elif kind == 7:
        position = rng.randrange(len(lines[i]) + 1)
        lines[i] = lines[i][:position] + rng.choice(NOISE) + lines[i][position:]
    else:
        lines[i] = lines[i].replace(":", "", 1) if rng.random() < 0.5 else lines[i].replace(" ", "", 1)
    return "\n".join(lines) + "\n"


def loads(path) -> bool:
    try:
        load_config(path)
        return True
    except RupqError:  # e.g. a tag whose module another engineer has not added yet
        return False


def test_mutated_example_configs_load_or_raise_a_rupq_error(tmp_path):
    assert len(EXAMPLES) >= 20
    loadable = [path for path in EXAMPLES if loads(path)]
    assert len(loadable) >= 4, loadable
    rng = random.Random(20240808)
    config = tmp_path / "mutant.yaml"
    escaped, outcomes = [], {"loaded": 0, "refused": 0}
    for number in range(MUTANTS):
        # Two thirds from configs that load as they are, so that mutants get past the tags.
        source = loadable[number % len(loadable)] if number % 3 else EXAMPLES[number % len(EXAMPLES)]
        text = source.read_text()
        for _ in range(rng.randint(1, 3)):
            text = mutate(text, rng)
        config.write_text(text)
        try:
            load_config(config)
            outcomes["loaded"] += 1
        except RupqError as error:
            outcomes["refused"] += 1
            assert "\n" not in str(error)
        except BaseException as error:  # noqa: BLE001  (the point: nothing else may escape)
            escaped.append(f"mutant {number} of {source.name}: {type(error).__name__}: {error}\n{text}\n"
                           + "".join(traceback.format_exception(error)[-3:]))
    assert not escaped, f"{len(escaped)} mutants escaped, e.g.:\n" + "\n".join(escaped[:3])
    # Both outcomes must be common, or the generator is not exercising the loader.
    assert outcomes["loaded"] >= 50 and outcomes["refused"] >= 50, outcomes
    # No wall-clock limit (it failed on a loaded machine for no reason): a loader that became
    # slow shows in the slowest tests that CI lists (pytest --durations).
