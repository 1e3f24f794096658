"""The only package that reads config and WORKDIR: one module per step, their order and DONE records, the demo.

    workdir.py  every WORKDIR path          table.py   load_table(config, workdir)
    extract.py refs.py train.py verify.py classifier.py export.py   one runner per step
    records.py  order, DONE records, completion      runner.py  run_step / run_steps, the lock (lock.py)
    demo.py     cleannet-demo

Imports everything but `cli`. The names below are the old module `cleannet_tf.pipeline` (one release).
"""
from cleannet_tf.pipeline.classifier import classifier_weights, run_train_classifier  # noqa: F401
from cleannet_tf.pipeline.records import (  # noqa: F401
    STEP_FIELDS,
    STEPS,
    VERIFY_OUTPUTS,
    adopt_legacy,
    read_record,
    record_name,
    recorded_warnings,
    staleness,
    step_complete,
    weighted_classifiers,
)
from cleannet_tf.pipeline.refs import reference_rows, run_refs  # noqa: F401
from cleannet_tf.pipeline.runner import command_line, run_step, run_steps, start_command  # noqa: F401
from cleannet_tf.pipeline.workdir import classifier_output_dir, done_dir, export_dir  # noqa: F401
