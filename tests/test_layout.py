"""The layout a student reads: one training step and one evaluation in train.py and model.py, with few names from
elsewhere on the way (tests/reading_path.py measures them), and no function too long to read at once."""

import ast

from conftest import REPO
from reading_path import measure

# The run in train.py reads straight under three banners (setup, loop, ending): split up, its parts would hand a
# dozen values to each other, so it may be longer than the 80 lines every other function keeps to.
FUNCTION_LINES, RUN_LINES = 80, 130


def test_a_step_and_an_evaluation_meet_at_most_15_names_from_other_modules():
    path = measure(REPO)
    assert len(path["direct"]) <= 15, path["direct"]
    assert {"estimate_loss", "train_step", "get_lr", "get_batch"} <= set(path["train_functions"])


def test_train_py_is_short_and_its_docstring_names_every_module_it_imports():
    source = (REPO / "train.py").read_text(encoding="utf-8")
    assert len(source.splitlines()) < 450
    tree = ast.parse(source)
    project = {p.stem for p in REPO.glob("*.py")}
    imported = {alias.name for node in tree.body if isinstance(node, ast.Import) for alias in node.names} | \
        {node.module for node in tree.body if isinstance(node, ast.ImportFrom)}
    unnamed = [m for m in sorted(imported & project) if f"{m}.py" not in ast.get_docstring(tree)]
    assert not unnamed, f"train.py's docstring does not name {unnamed}"


def test_no_function_is_too_long_to_read_at_once():
    long = []
    for path in sorted(REPO.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                is_run = path.name == "train.py" and any(isinstance(n, ast.While) for n in ast.walk(node))
                lines = node.end_lineno - node.lineno + 1
                if lines > (RUN_LINES if is_run else FUNCTION_LINES):
                    long.append(f"{path.name}:{node.name} ({lines} lines)")
    assert not long, long
