"""The boundaries docs/architecture.md promises: the library never imports its command lines, data preparation and
the API clients load without the model stack, and no function or class grows past the project's ceilings. That the
package installs and imports from anywhere, and that the trainers and a local user load without the Claude SDK and
the API client layer, is checked in test_install.py, in the one fresh process that imports the trainers."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "sdpo_interactions"
MAX_FUNCTION_LINES = 60
MAX_CLASS_LINES = 300


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")


MODULES = sorted(PACKAGE.rglob("*.py"))
LIBRARY = [p for p in MODULES if "cli" not in p.relative_to(PACKAGE).parts]


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, absolute, including imports inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", LIBRARY, ids=module_name)
def test_the_library_never_imports_a_command_line(path):
    assert {m for m in imported_modules(path) if m.startswith("sdpo_interactions.cli")} == set()


def test_every_module_is_listed_in_the_architecture_page():
    page = (REPO / "docs" / "architecture.md").read_text()
    missing = [module_name(p) for p in MODULES if p.name != "__init__.py" and f"`{module_name(p)}`" not in page]
    assert missing == []


def imports_in_fresh_process(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sorted(sys.modules)))"],
                         cwd=REPO / "tests", capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return set(out.stdout.split())


def test_data_preparation_and_run_files_load_without_torch():
    loaded = imports_in_fresh_process("import sdpo_interactions.cli.prepare_data, sdpo_interactions.run_files, "
                                      "sdpo_interactions.conversations, sdpo_interactions.personas")
    assert "torch" not in loaded and "transformers" not in loaded


def test_no_top_level_module_shadows_a_known_package():
    shadowing = {"evaluate", "datasets", "trl", "transformers", "accelerate", "peft", "torch", "train_utils"}
    assert {p.stem for p in REPO.glob("*.py")} & shadowing == set()


def test_no_code_edits_sys_path():
    offenders = [str(p.relative_to(REPO)) for folder in ("src", "tests", "bench", "scripts")
                 for p in (REPO / folder).rglob("*.py") if "sys.path" in p.read_text() and p.name != Path(__file__).name]
    assert offenders == []


def long_definitions(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        limit = {ast.FunctionDef: MAX_FUNCTION_LINES, ast.AsyncFunctionDef: MAX_FUNCTION_LINES,
                 ast.ClassDef: MAX_CLASS_LINES}.get(type(node))
        if limit and node.end_lineno - node.lineno + 1 > limit:
            found.append(f"{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    return found


@pytest.mark.parametrize("path", MODULES + sorted(REPO.glob("*.py")), ids=lambda p: str(p.relative_to(REPO)))
def test_no_function_or_class_is_longer_than_the_ceiling(path):
    assert long_definitions(path) == []
