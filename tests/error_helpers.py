"""Shared by the tests of errors for people (one line naming the file, line or field): the commands as
subprocesses, small file writers, a truncating corrupter, a validated config from `section__field` keywords."""

import os
import subprocess
import sys

from cleannet_tf import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(module, *args, env=None):
    return subprocess.run([sys.executable, "-m", f"cleannet_tf.cli.{module}", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300, env=env)


def _write(path, text, mode="w"):
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with open(path, mode) as f:
        f.write(text)
    return str(path)


def _truncate(path, keep=0.5):
    data = open(path, "rb").read()
    open(path, "wb").write(data[: int(len(data) * keep)])


def _tsv(directory, rows, header="path\tlabel\tverified\tsplit"):
    return _write(os.path.join(directory, "labels.tsv"), "\n".join([header, *rows]) + "\n")


def _config(**fields):
    config = config_lib.default_config()
    for field, value in fields.items():
        section, name = field.split("__")
        config[section][name] = value
    return config_lib.validate(config)


def _food101n(root, keys, verified_train=(), verified_val=()):
    meta = os.path.join(root, "meta")
    _write(os.path.join(meta, "classes.txt"), "class_name\nthree\nfour\n")
    _write(os.path.join(meta, "imagelist.tsv"), "class_name/key\n" + "".join(f"{k}\n" for k in keys))
    for name, rows in (("train", verified_train), ("val", verified_val)):
        _write(os.path.join(meta, f"verified_{name}.tsv"),
               "class_name/key\tverification_label\n" + "".join(f"{k}\t{v}\n" for k, v in rows))
    return str(root)
