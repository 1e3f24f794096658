"""`python -m cleannet_tf`: lists the commands, each also runnable as `python -m cleannet_tf.cli.<step>`.

Reads each entry script's docstring from its file (nothing is imported, so this does not load TensorFlow).
"""

import ast
from pathlib import Path

CLI = Path(__file__).resolve().parent / "cli"


def commands() -> list[tuple[str, str, str]]:
    """(console script, module, one-line description) of every entry script in cli/, sorted by script name."""
    found = []
    for path in sorted(CLI.glob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        name, _, description = doc.partition("\n")[0].partition(": ")
        if name.startswith("cleannet-") and description:
            found.append((name, f"cleannet_tf.cli.{path.stem}", description))
    return sorted(found)


def main() -> None:
    rows = commands()
    width = max(len(name) for name, _, _ in rows)
    print("cleannet_tf commands (console script, or python -m <module>):")
    for name, module, description in rows:
        print(f"  {name:<{width}}  {module:<32} {description}")
    print("Each takes --config=configs/<x>.py and --workdir=DIR; add --help for its flags.")


if __name__ == "__main__":
    main()
