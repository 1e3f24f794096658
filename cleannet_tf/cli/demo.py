"""cleannet-demo: the whole pipeline on the embedded demo dataset, then a summary.

    cleannet-demo --workdir=/tmp/cleannet_demo
    cleannet-demo --config=configs/demo.py:digits --workdir=/tmp/cleannet_digits

Reads: nothing but its flags (default --config: configs/demo.py). A data.root
holding your own dataset is used as it is, with the demo's settings.
Writes: the demo data (real digits, known label noise) under WORKDIR/demo_data
(or a new or empty --config.data.root), then each pipeline step's outputs that
are not complete (WORKDIR/classifier/, features/, references.npz, cleannet/,
verify/, saved_models/); verifies images through the server it starts and
prints a summary.

Config: --config=configs/<x>.py, any field overridden as --config.section.field=value;
`cleannet-config --show` lists every field with its comment and default (schema:
cleannet_tf/config/). Also writes the config it ran with to WORKDIR/config.demo.json.
Errors print one line and exit 1; --debug (or --verbosity=1) adds the traceback.

Imports `pipeline`.
"""

import time

from cleannet_tf.cli import flags
from cleannet_tf.pipeline import demo
from cleannet_tf.pipeline.steps import STEPS
from cleannet_tf.pipeline.table import load_table


def main(argv):
    config, workdir = flags.setup(argv, "demo")
    start = time.perf_counter()
    table = load_table(config, workdir, steps=[step for step in STEPS if step != "plan"])  # serves: needs verified rows
    summary = demo.run_demo(config, workdir, table)
    print(demo.format_summary(summary, seconds=time.perf_counter() - start))


def run():
    flags.run(main, default_config=flags.default_config_path("demo"))


if __name__ == "__main__":
    run()
