"""cleannet-extract: one feature vector per image -> WORKDIR/features/.

    cleannet-extract --config=configs/demo.py --workdir=/tmp/cleannet_demo

Resumable: rerun after a kill and only the unfinished shards are computed.
Skipped when --config.data.features names a precomputed .npz.

Across hosts (a shared WORKDIR): run one worker per host with TF_CONFIG set (chief and workers extract), or
with --task_index=i --num_tasks=n; each extracts its own block of shards, and the last to finish writes
WORKDIR/features/complete.json. Each worker runs its own local strategy (no collectives are needed).
"""

from absl import app, flags, logging

from cleannet_tf import cli, distribute, extract_lib

_TASK_INDEX = flags.DEFINE_integer("task_index", None, "This worker's index in [0, num_tasks) (default: TF_CONFIG).")
_NUM_TASKS = flags.DEFINE_integer("num_tasks", None, "Number of extraction workers (default: TF_CONFIG, else 1).")


def main(argv):
    config, workdir = cli.setup(argv, "extract")
    try:
        task_index, num_tasks = extract_lib.worker_task(_TASK_INDEX.value, _NUM_TASKS.value)
    except ValueError as error:
        raise app.UsageError(f"--task_index/--num_tasks/TF_CONFIG: {error}") from error
    strategy_name = config.runtime.strategy
    if strategy_name == "multi_worker":
        logging.info("runtime.strategy=multi_worker: extraction workers share no state, each uses 'auto' locally.")
        strategy_name = "auto"
    strategy = distribute.build_strategy(strategy_name)
    extract_lib.run_extract(config, workdir, strategy=strategy, task_index=task_index, num_tasks=num_tasks)


def run():
    app.run(main)


if __name__ == "__main__":
    run()
