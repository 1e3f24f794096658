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


def test_a_missing_browser_fails_the_browser_tests_and_stops_ci(tmp_path, monkeypatch):
    """The browser tests fail without Chromium (skip only with CLEANNET_NO_BROWSER=1); .ci/run exits 1 if
    apt-get cannot install it, before the venv is made."""
    import shutil
    import subprocess

    import pytest
    from conftest import chromium_paths

    bare = tmp_path / "bin"  # a PATH with dirname and an apt-get that fails, but no chromium
    bare.mkdir()
    (bare / "dirname").symlink_to(shutil.which("dirname"))
    (bare / "apt-get").write_text("#!/bin/sh\nexit 100\n")
    (bare / "apt-get").chmod(0o755)
    monkeypatch.setenv("PATH", str(bare))
    monkeypatch.delenv("CLEANNET_NO_BROWSER", raising=False)
    with pytest.raises(pytest.fail.Exception, match="no chromium or chromedriver on PATH"):
        chromium_paths(driver=True)
    with pytest.raises(pytest.fail.Exception, match="no chromium on PATH"):
        chromium_paths()
    monkeypatch.setenv("CLEANNET_NO_BROWSER", "1")
    with pytest.raises(pytest.skip.Exception, match="CLEANNET_NO_BROWSER=1"):
        chromium_paths(driver=True)
    result = subprocess.run([shutil.which("bash", path="/usr/bin:/bin"), str(ROOT / ".ci" / "run")],
                            capture_output=True, text=True, timeout=60, env={"PATH": str(bare)})
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert result.stderr.strip() == (".ci/run: could not install chromium and chromium-driver (apt-get failed); "
                                     "the browser tests need them.")
