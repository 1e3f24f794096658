"""cleannet-config (cleannet_tf/cli/config.py): --show prints every field with its comment and default."""



from error_helpers import _run

from cleannet_tf import config as config_lib


def test_config_show_prints_every_field_with_its_comment_and_default():
    result = _run("config", "--show", "--config=configs/demo.py")
    assert result.returncode == 0, result.stderr
    out = result.stdout

    def flatten(config, prefix=""):
        for name, value in config.items():
            if hasattr(value, "items"):
                yield from flatten(value, f"{prefix}{name}.")
            else:
                yield f"{prefix}{name}", value

    for field, default in flatten(config_lib.default_config()):
        assert f"\n{field} = {default!r}" in "\n" + out, field
    assert "data.root = ''\n    Dataset root (release layout), or for `tsv` the .tsv file itself." in out
    assert "data.demo = ''" in out and "(this config: 'two_digits')" in out
