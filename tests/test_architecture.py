"""The module boundaries ARCHITECTURE.md promises: library code never imports an entry point, the trainer runs
without the API SDK, and no library function grows past the project's ceiling."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ENTRY_POINTS = {"train", "train_offline", "evaluate", "visualize_signal", "prepare_data"}
LIBRARY = ["run_files", "personas", "prompts", "conversations", "cli_args", "sampling", "user_simulator",
           "chat_clients", "api_user", "sdpo_trainer", "offline_trainer", "generation", "judging", "eval_report"]
MAX_FUNCTION_LINES = 60


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("module", LIBRARY)
def test_library_modules_never_import_an_entry_point(module):
    assert imported_modules(REPO / f"{module}.py") & ENTRY_POINTS == set()


def test_every_module_is_listed_in_the_architecture_page():
    page = (REPO / "ARCHITECTURE.md").read_text()
    for module in LIBRARY + sorted(ENTRY_POINTS):
        assert f"`{module}.py`" in page, module


def test_the_trainer_and_a_local_user_load_without_the_api_sdk():
    code = "import sys, sdpo_trainer, offline_trainer, user_simulator; print('anthropic' in sys.modules or 'chat_clients' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("module", LIBRARY + sorted(ENTRY_POINTS))
def test_no_function_is_longer_than_the_ceiling(module):
    tree = ast.parse((REPO / f"{module}.py").read_text())
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert long == []
