"""cleannet-review: a local web app where a person verifies the labels cleannet-verify proposed.

    cleannet-review --workdir=WORKDIR     (python -m cleannet_tf.cli.review)

store.py keeps the decisions (WORKDIR/review/), plan.py reads the plan (WORKDIR/verify/to_verify.tsv), session.py
joins them with the dataset and cleannet-verify's outputs, server.py serves the page in static/ and its JSON API,
retrain.py reruns the train and verify steps in the server's process with the new labels (data.extra_verified
reads WORKDIR/review/verified_{train,val}.tsv), retrain_backup.py sets aside and puts back what a retrain replaces.
"""
