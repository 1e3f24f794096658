"""The package layout: imports run one way between subpackages; only pipeline/, cli/, review/ know WORKDIR.

Parses every module of cleannet_tf/ (no imports run). An import inside a function is still an edge.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "cleannet_tf"

# package -> the packages it may import besides itself (third-party imports are free). The one table.
ALLOWED = {
    "ops": set(),
    "sanity": set(),  # figures that look like a failed run (pure functions)
    "atomic_io": set(),
    "_startup": set(),
    "data": {"ops", "atomic_io"},
    "model": {"ops"},
    "features": {"data", "model", "ops", "atomic_io"},
    "detection": {"data", "features", "model", "ops", "atomic_io", "sanity"},
    "training": {"data", "features", "model", "detection", "ops", "atomic_io", "sanity"},
    "export": {"data", "features", "model", "detection", "training", "ops", "atomic_io"},
    "serving": {"export"},
    "config": {"data", "features", "model", "detection", "training", "export", "ops", "atomic_io"},
    "detector": {"config", "data", "features", "model", "detection", "training", "ops", "atomic_io"},
    "pipeline": {"config", "data", "features", "model", "detection", "training", "export", "serving", "ops",
                 "atomic_io", "sanity"},
    "review": {"config", "data", "features", "model", "detection", "training", "pipeline", "ops", "atomic_io"},
    "cli": {"config", "data", "features", "model", "detection", "training", "export", "serving", "pipeline",
            "review", "ops", "atomic_io", "sanity"},
    "__init__": {"_startup", "detector", "detection", "model"},
}
# Old module names kept for one release: each only re-exports its new home (README, "Layout").
SHIMS = {
    "active_verification", "backbones", "checkpointing", "classifier_lib", "config_cli", "datasets", "demo",
    "demo_data", "demo_lib", "detectors", "distribute", "efficientnet_lite", "export_lib", "extract",
    "extract_lib", "feature_store", "input_pipeline", "label_noise", "layers", "losses", "metrics",
    "neighbours", "references", "refs", "report", "run", "scores_io", "serve", "train", "train_classifier",
    "train_data", "train_lib", "training_loop", "verifier", "verify", "verify_lib", "workdir_lock",
}
WORKDIR_PACKAGES = {"pipeline", "cli", "review"}


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        top = rel.parts[0].removesuffix(".py")
        if len(rel.parts) == 1 and top in SHIMS:
            continue
        if rel.name == "__main__.py":  # an entry script (python -m cleannet_tf.review, the old ...export): cli
            top = "cli"
        yield path, rel, top


def _imported(tree):
    """(line, first package segment) of every cleannet_tf import in `tree`."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            parts = node.module.split(".")
            if parts[0] != "cleannet_tf":
                continue
            if len(parts) > 1:
                yield node.lineno, parts[1]
            else:
                for alias in node.names:
                    yield node.lineno, alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "cleannet_tf" and len(parts) > 1:
                    yield node.lineno, parts[1]


def test_every_package_is_in_the_table():
    tops = {top for _, _, top in _modules()}
    assert tops <= set(ALLOWED), f"packages without a row in ALLOWED: {sorted(tops - set(ALLOWED))}"


def test_imports_run_one_way():
    wrong = []
    for path, rel, top in _modules():
        for line, target in _imported(ast.parse(path.read_text())):
            if target != top and target not in ALLOWED[top]:
                wrong.append(f"cleannet_tf/{rel}:{line}: {top} imports {target}")
    assert not wrong, "imports against the layer table:\n" + "\n".join(wrong)


def test_serving_takes_only_the_names_of_export():
    # serving/ runs without the export code (and its TensorFlow graph building): only export/names.py
    wrong = []
    for path in sorted((PACKAGE / "serving").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cleannet_tf.export"):
                if node.module != "cleannet_tf.export.names":
                    wrong.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.module}")
    assert not wrong, wrong


def test_the_table_has_no_cycle():
    # a cycle in ALLOWED would let two packages import each other
    state = {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in ALLOWED.get(node, ()):
            assert state.get(nxt) != "open", f"cycle: {' -> '.join(stack + [node, nxt])}"
            if nxt not in state:
                visit(nxt, stack + [node])
        state[node] = "done"

    for node in ALLOWED:
        if node not in state:
            visit(node, [])


def test_only_pipeline_cli_review_know_workdir():
    """Outside those packages no function takes a `workdir`.

    Two exceptions: config.py (data.root's default, WORKDIR/demo_data) and detector.py, whose
    `CleanNetDetector.fit(workdir=)` is a caller's scratch folder, not a pipeline WORKDIR.
    """
    wrong = []
    for path, rel, top in _modules():
        if top in WORKDIR_PACKAGES or top in ("config", "detector"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
                if any(a.arg == "workdir" for a in args):
                    wrong.append(f"cleannet_tf/{rel}:{node.lineno}: {node.name}(workdir)")
    assert not wrong, "WORKDIR known outside pipeline/, cli/, review/:\n" + "\n".join(wrong)


LONG_OK = {"cleannet_tf/config.py": 420}  # the one schema, kept whole


@pytest.mark.parametrize("root", ["cleannet_tf", "benchmarks"])
def test_no_file_over_400_lines(root):
    long = {name: n for p in (ROOT / root).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > LONG_OK.get(name := str(p.relative_to(ROOT)), 400)}
    assert not long, f"files over 400 lines: {long}"


def test_layout_checks_catch_a_wrong_edge(tmp_path):
    # the checker itself: an import from data/ up into pipeline/ is reported
    tree = ast.parse("def f():\n    from cleannet_tf.pipeline import runner\n")
    assert list(_imported(tree)) == [(2, "pipeline")] and "pipeline" not in ALLOWED["data"]
