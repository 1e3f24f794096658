"""cleannet-config: every config field with its comment and default (the schema, cleannet_tf/config/).

    cleannet-config --show
    cleannet-config --show --config=configs/demo.py     # also that config's value where it differs

Reads: cleannet_tf/config/ (and --config, if given). Writes: nothing; prints one
block per field: `section.field = default`, then its comment. Any field is set on
a command line as --config.section.field=value. Errors print one line and exit 1;
--debug adds the traceback.

Imports `config`.
"""

from __future__ import annotations

import ast
import inspect
import io
import textwrap
import tokenize

import ml_collections
from absl import flags

from cleannet_tf import config as config_lib
from cleannet_tf.cli import flags as cli_flags

_SHOW = flags.DEFINE_boolean("show", True, "Print every field with its comment and default.")


def field_comments() -> dict[str, str]:
    """Field ("data.root") -> its comment in `config.default_config`: the comment lines right above its
    assignment plus the comment at the end of its line. Section headers ("# --- ...") are not included."""
    source = inspect.getsource(config_lib.default_config)
    comments: dict[int, tuple[str, bool]] = {}  # line -> (text, whole line)
    lines = source.splitlines()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            row = token.start[0]
            whole = not lines[row - 1][:token.start[1]].strip()
            comments[row] = (token.string.lstrip("#").strip(), whole)
    result = {}
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Assign) or len(node.targets) != 1:
            continue
        parts, target = [], node.targets[0]
        while isinstance(target, ast.Attribute):
            parts.append(target.attr)
            target = target.value
        if not (isinstance(target, ast.Name) and target.id == "config" and parts):
            continue
        text = []
        row = node.lineno - 1
        while row in comments and comments[row][1] and not comments[row][0].startswith("---"):
            text.insert(0, comments[row][0])
            row -= 1
        trailing = comments.get(node.end_lineno)
        if trailing and not trailing[1]:
            text.append(trailing[0])
        result[".".join(reversed(parts))] = " ".join(text)
    return result


def _flatten(config: ml_collections.ConfigDict, prefix: str = "") -> dict[str, object]:
    out = {}
    for name, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            out.update(_flatten(value, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = value
    return out


def format_schema(config: ml_collections.ConfigDict | None = None) -> str:
    """The text `--show` prints: every field, its default, `config`'s value where it differs, the comment."""
    defaults = _flatten(config_lib.default_config())
    given = _flatten(config) if config is not None else {}
    comments = field_comments()
    order = {field: i for i, field in enumerate(comments)}  # the schema's own order
    out, section = [], None
    for field in sorted(defaults, key=lambda name: order.get(name, len(order))):
        default = defaults[field]
        head = field.split(".")[0] if "." in field else ""
        if head != section:
            section = head
            out.append(f"\n[{head}]" if head else "[top level]")
        line = f"{field} = {default!r}"
        if field in given and given[field] != default:
            line += f"    (this config: {given[field]!r})"
        out.append(line)
        if comments.get(field):
            out.append(textwrap.fill(comments[field], width=100, initial_indent="    ", subsequent_indent="    "))
    return "\n".join(out).lstrip("\n") + "\n"


def main(argv):
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments: {' '.join(argv[1:])}")
    config = cli_flags.config_if_given()
    if _SHOW.value:
        print(format_schema(config), end="")


def run():
    cli_flags.run(main, workdir_flag=False)


if __name__ == "__main__":
    run()
