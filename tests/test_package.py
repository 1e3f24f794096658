"""The package's surface: the lazy public API, Keras class registration, `python -m cleannet_tf` and its commands."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "cleannet_tf"


def _python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_ops_and_config_import_without_tensorflow():
    assert _python("import sys, cleannet_tf.ops, cleannet_tf.atomic_io, cleannet_tf.sanity\n"
                   "print('tensorflow' in sys.modules, 'keras' in sys.modules)") == "False False"


@pytest.mark.parametrize("order", ["cleannet_tf first", "keras first"])
def test_importing_the_package_registers_its_keras_classes_in_either_order(order):
    imports = "import cleannet_tf, keras" if order == "cleannet_tf first" else "import keras, cleannet_tf"
    names = ["cleannet_tf>FeatureNormalization", "cleannet_tf>CosineSimilarity"]
    out = _python(f"{imports}\nprint([keras.saving.get_registered_object(n) is not None for n in {names!r}])")
    assert out == "[True, True]"


def test_every_module_with_a_registered_keras_class_is_listed():
    import cleannet_tf

    registering = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any("register_keras_serializable" in ast.unparse(d)
                                                      for d in node.decorator_list):
                registering.add(".".join(("cleannet_tf", *path.relative_to(PACKAGE).with_suffix("").parts)))
    assert registering and registering == set(cleannet_tf.KERAS_CLASS_MODULES)


def test_the_public_api_loads_on_first_use():
    out = _python("import sys, cleannet_tf\nbefore = 'tensorflow' in sys.modules\n"
                  "print(before, callable(cleannet_tf.find_label_issues), sorted(cleannet_tf.__all__))")
    assert out == ("False True ['CleanNetDetector', '__version__', 'build_cleannet', 'find_label_issues', "
                   "'sample_weights']")
    with pytest.raises(AttributeError, match="no attribute 'datasets'"):
        import cleannet_tf

        cleannet_tf.datasets  # noqa: B018  (an old module name: retired)


def test_python_m_cleannet_tf_lists_every_console_script_and_each_runs_as_python_m():
    import importlib.metadata

    from cleannet_tf.__main__ import commands

    listed = {name: module for name, module, _ in commands()}
    scripts = {entry.name: entry.value.split(":")[0]
               for entry in importlib.metadata.entry_points(group="console_scripts")
               if entry.value.startswith("cleannet_tf.")}
    assert listed == scripts
    out = subprocess.run([sys.executable, "-m", "cleannet_tf"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and all(f"  {name} " in out.stdout for name in scripts), out.stdout
    review = subprocess.run([sys.executable, "-m", listed["cleannet-review"], "--help"], capture_output=True,
                            text=True, cwd=ROOT, timeout=300)
    assert "cleannet-review: verify labels in a browser" in review.stdout and "--workdir" in review.stdout, review
