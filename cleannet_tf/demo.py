"""cleannet-demo: the whole pipeline on the embedded demo dataset, then a summary.

    cleannet-demo --workdir=/tmp/cleannet_demo
    cleannet-demo --config=configs/demo.py:digits --workdir=/tmp/cleannet_digits

Generates the demo data (real digits, known label noise) under WORKDIR/demo_data,
then runs each pipeline step that exists, skipping those already complete.
"""

import sys
import time

from absl import app

from cleannet_tf import cli, datasets, demo_lib


def main(argv):
    config, workdir = cli.setup(argv, "demo")
    start = time.perf_counter()
    table = datasets.load_table(config, workdir)
    summary = demo_lib.run_demo(config, workdir, table)
    print(demo_lib.format_summary(summary, seconds=time.perf_counter() - start))


def run():
    cli.set_default_config(cli.default_config_path("demo"), sys.argv)
    app.run(main)


if __name__ == "__main__":
    run()
