"""cleannet-extract: one feature vector per image of the dataset -> WORKDIR/features/.

    cleannet-extract --config=configs/demo.py --workdir=/tmp/cleannet_demo

Reads: the dataset (data.format, data.root), the backbone (model.backbone,
model.weights; `classifier` = WORKDIR/classifier/model.keras).
Writes: WORKDIR/features/ (manifest.json, keys.npy, shard-NNNNN.{features,valid}.npy).
Resumable: rerun after a kill and only the unfinished shards are computed.
Skipped when --config.data.features names a precomputed .npz.

Across hosts (a shared WORKDIR): run one worker per host with TF_CONFIG set (chief and workers extract), or
with --task_index=i --num_tasks=n; each extracts its own block of shards, and the last to finish writes
WORKDIR/features/complete.json. Each worker runs its own local strategy (no collectives are needed); the
workers share WORKDIR, so they do not take its lock, and the next cleannet-run (or a one-worker
cleannet-extract) records the finished step.

Config: --config=configs/<x>.py, any field overridden as --config.section.field=value;
`cleannet-config --show` lists every field with its comment and default (schema:
cleannet_tf/config/). When it finishes, writes the config of its outputs to WORKDIR/config.extract.json.
Errors print one line and exit 1; --debug (or --verbosity=1) adds the traceback.

Imports `features`, `pipeline`, `training`.
"""

from absl import app, flags, logging

from cleannet_tf.cli import flags as cli_flags
from cleannet_tf.features import extract
from cleannet_tf.pipeline import runner
from cleannet_tf.training import distribute

_TASK_INDEX = flags.DEFINE_integer("task_index", None, "This worker's index in [0, num_tasks) (default: TF_CONFIG).")
_NUM_TASKS = flags.DEFINE_integer("num_tasks", None, "Number of extraction workers (default: TF_CONFIG, else 1).")


def main(argv):
    try:
        task_index, num_tasks = extract.worker_task(_TASK_INDEX.value, _NUM_TASKS.value)
    except ValueError as error:
        raise app.UsageError(f"--task_index/--num_tasks/TF_CONFIG: {error}") from error
    config, workdir = cli_flags.setup(argv, "extract", lock=num_tasks == 1)
    strategy_name = config.runtime.strategy
    if strategy_name == "multi_worker":
        logging.info("runtime.strategy=multi_worker: extraction workers share no state, each uses 'auto' locally.")
        strategy_name = "auto"
    strategy = distribute.build_strategy(strategy_name)
    runner.run_step("extract", config, workdir, strategy=strategy, extract_task=(task_index, num_tasks))


def run():
    cli_flags.run(main)


if __name__ == "__main__":
    run()
