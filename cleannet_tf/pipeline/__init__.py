"""The only package that reads config and WORKDIR: one module per step, their order and DONE records, the demo.

    workdir.py  every WORKDIR path          table.py   load_table(config, workdir)
    extract.py refs.py train.py verify.py classifier.py export.py   one runner per step
    records.py  order, DONE records, completion      runner.py  run_step / run_steps, the lock (lock.py)
    demo.py     cleannet-demo

Imports everything but `cli`.
"""
