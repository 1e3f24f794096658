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
    "data": {"ops", "atomic_io"},
    "model": {"ops"},
    "features": {"data", "model", "ops", "atomic_io"},
    "training": {"data", "features", "model", "ops", "atomic_io", "sanity"},
    # detection: the verifier of a trained CleanNet, and CleanNetDetector, which trains one (training/)
    "detection": {"config", "data", "features", "model", "training", "ops", "atomic_io", "sanity"},
    "export": {"data", "features", "model", "detection", "training", "ops", "atomic_io"},
    "serving": {"export"},
    "config": set(),  # the schema: a leaf (importing it loads no TensorFlow)
    "pipeline": {"config", "data", "features", "model", "detection", "training", "export", "serving", "ops",
                 "atomic_io", "sanity"},
    "review": {"config", "data", "features", "model", "detection", "training", "pipeline", "ops", "atomic_io"},
    "cli": {"config", "data", "features", "model", "detection", "training", "export", "serving", "pipeline",
            "review", "ops", "atomic_io", "sanity"},
    "__init__": set(),  # the public API loads lazily (importlib), so it names no package in an import
    "__main__": set(),  # python -m cleannet_tf: lists the commands from cli/'s files
}
WORKDIR_PACKAGES = {"pipeline", "cli", "review"}


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        top = rel.parts[0].removesuffix(".py")
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

    One exception: detection/detector.py, whose `CleanNetDetector.fit(workdir=)` is a caller's scratch folder,
    not a pipeline WORKDIR.
    """
    wrong = []
    for path, rel, top in _modules():
        if top in WORKDIR_PACKAGES or str(rel) == "detection/detector.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
                if any(a.arg == "workdir" for a in args):
                    wrong.append(f"cleannet_tf/{rel}:{node.lineno}: {node.name}(workdir)")
    assert not wrong, "WORKDIR known outside pipeline/, cli/, review/:\n" + "\n".join(wrong)


TOP_LEVEL_MODULES = {"__init__", "__main__", "config", "ops", "atomic_io", "sanity"}  # the rest is in subpackages


def test_top_level_holds_only_the_api_the_schema_and_shared_helpers():
    modules = {path.stem for path in PACKAGE.glob("*.py")}
    assert modules <= TOP_LEVEL_MODULES and len(modules) <= 6, f"top-level modules: {sorted(modules)}"


def test_no_module_only_re_exports_another():
    # a shim: a module whose body is imports (and a docstring) only; package __init__ files may be docstrings
    shims = []
    for path, rel, _ in _modules():
        body = [node for node in ast.parse(path.read_text()).body
                if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))]
        if body and all(isinstance(node, (ast.Import, ast.ImportFrom)) for node in body):
            shims.append(f"cleannet_tf/{rel}")
    assert not shims, f"modules that only re-export: {shims}"


def _module_graph():
    """module -> the cleannet_tf modules it imports (anywhere in it), as dotted names."""
    names = {".".join(("cleannet_tf", *rel.with_suffix("").parts)).removesuffix(".__init__"): path
             for path, rel, _ in _modules()}
    graph = {}
    for name, path in names.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("cleannet_tf"):
                for alias in node.names:
                    target = f"{node.module}.{alias.name}"
                    edges.add(target if target in names else node.module)
            elif isinstance(node, ast.Import):
                edges |= {alias.name for alias in node.names if alias.name.startswith("cleannet_tf.")}
        graph[name] = {edge for edge in edges if edge in names and edge != name}
    return graph


def _cycle(graph):
    state = {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt] if nxt in stack else stack + [node, nxt]
            if nxt not in state:
                found = visit(nxt, stack + [nxt])
                if found:
                    return found
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node, [node])
            if found:
                return found
    return None


def test_no_import_cycle_between_modules():
    cycle = _cycle(_module_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_check_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("root", ["cleannet_tf", "benchmarks", "tests"])
def test_no_file_over_400_lines(root):
    long = {str(path.relative_to(ROOT)): n for path in (ROOT / root).rglob("*.py")
            if (n := len(path.read_text().splitlines())) > 400}
    assert not long, f"files over 400 lines: {long}"


def test_layout_checks_catch_a_wrong_edge(tmp_path):
    # the checker itself: an import from data/ up into pipeline/ is reported
    tree = ast.parse("def f():\n    from cleannet_tf.pipeline import runner\n")
    assert list(_imported(tree)) == [(2, "pipeline")] and "pipeline" not in ALLOWED["data"]


def test_config_imports_nothing_of_the_package():
    # the schema (config/__init__.py) and its validation (config/validation.py) import only each other
    imported = [(path.name, line, target) for path in sorted((PACKAGE / "config").glob("*.py"))
                for line, target in _imported(ast.parse(path.read_text())) if target != "config"]
    assert (PACKAGE / "config" / "__init__.py").exists() and not imported, f"cleannet_tf/config/ imports: {imported}"


def _string_fields(config, prefix=""):
    for name, value in config.items():
        if hasattr(value, "items"):
            yield from _string_fields(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", value


@pytest.mark.parametrize("name", [None, *sorted(path.stem for path in (ROOT / "configs").glob("*.py"))])
def test_no_config_field_is_a_comma_string(name):
    # lists are tuples: ("soft", "hard"), not "soft,hard"
    import importlib.util

    from cleannet_tf import config as config_lib

    if name is None:
        config = config_lib.default_config()
    else:
        spec = importlib.util.spec_from_file_location(name, ROOT / "configs" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        config = module.get_config()
    commas = {field: value for field, value in _string_fields(config) if isinstance(value, str) and "," in value}
    assert not commas, f"{name or 'default_config()'}: comma strings {commas}"
