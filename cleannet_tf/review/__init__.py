"""cleannet-review: a local web app where a person verifies the labels cleannet-verify proposed.

    cleannet-review --workdir=WORKDIR     (python -m cleannet_tf.cli.review)

store.py keeps the decisions (WORKDIR/review/), session.py joins them with the dataset and cleannet-verify's
outputs, server.py serves the page in static/ and its JSON API, retrain.py reruns cleannet-train and
cleannet-verify with the new labels (data.extra_verified reads WORKDIR/review/verified_train.tsv).
"""
