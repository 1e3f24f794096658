"""Project rules: CI runs the README's test command; flags only in entry scripts."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLI = ROOT / "cleannet_tf" / "cli"  # the entry scripts and their flag plumbing


def _readme_commands():
    block = re.search(r"## Quickstart.*?```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    return [line for line in block.splitlines() if line and not line.startswith("#")]


def test_readme_has_two_quickstart_commands_and_ci_runs_the_test_one():
    demo, tests = _readme_commands()
    assert "cleannet-demo" in demo and tests.endswith("pytest -q")
    assert tests in (ROOT / ".ci" / "run").read_text()


def test_only_entry_scripts_import_absl_flags():
    offenders = []
    for path in (ROOT / "cleannet_tf").rglob("*.py"):
        if CLI in path.parents or path.name == "__main__.py":  # __main__.py: python -m cleannet_tf.review
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module == "absl":
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            if "flags" in names or "absl.flags" in names or "config_flags" in names:
                offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, f"absl flags imported outside entry scripts: {offenders}"


def test_console_scripts_point_at_existing_functions():
    import importlib

    setup_text = (ROOT / "setup.py").read_text()
    for name, target in re.findall(r'"(cleannet-[a-z-]+)": "([\w.:]+)"', setup_text):
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), name
