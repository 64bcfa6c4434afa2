"""README.md's models × recipes × datasets table is scripts/models_table.py's output, not a hand-kept copy."""

import functools
import importlib.util
import subprocess
import sys

from conftest import REPO

spec = importlib.util.spec_from_file_location("models_table", REPO / "scripts" / "models_table.py")
models_table = importlib.util.module_from_spec(spec)
spec.loader.exec_module(models_table)


def fresh_interpreter(code: str) -> str:
    """What ``code`` prints in a new Python: test modules register models of their own
    (``tiny_convnet``) in this one, which are not the project's."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO).stdout


@functools.cache  # both tests read it: one fresh interpreter, not two
def generated_table() -> str:
    return fresh_interpreter(f"import runpy, sys; sys.argv = ['models_table']; "
                             f"runpy.run_path({str(REPO / 'scripts' / 'models_table.py')!r}, run_name='__main__')")


def test_readme_table_is_the_generated_one():
    readme = (REPO / "README.md").read_text()
    assert models_table.readme_copy(readme) == generated_table().rstrip("\n"), (
        "README.md's models table differs from the registry and rupq/examples: "
        "run python scripts/models_table.py --write"
    )


def test_table_lists_every_example_config_and_registered_model():
    table = generated_table()
    for path in (REPO / "rupq" / "examples").rglob("*.yaml"):
        assert f"({path.relative_to(REPO).as_posix()})" in table, f"{path} is missing from the table"
    for name in fresh_interpreter("from rupq.models import model_names; print(*model_names())").split():
        assert f"`{name}`" in table
    # a recipe that does not exist is not claimed: object detection has no w2a2 LSQ+ config
    row = next(line for line in table.splitlines() if line.startswith("| object detection | `yolo_v3` |"))
    assert "w2a2_rupq.yaml" in row and "w2a2_lsqplus.yaml" not in row


def test_write_replaces_only_the_text_between_the_markers():
    text = f"# title\n\nbefore\n{models_table.BEGIN}\nold table\n{models_table.END}\nafter\n"
    written = models_table.replace_between_markers(text, "new table")
    assert written == f"# title\n\nbefore\n{models_table.BEGIN}\nnew table\n{models_table.END}\nafter\n"
    assert models_table.readme_copy(written) == "new table"
