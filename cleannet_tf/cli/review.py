"""cleannet-review: verify labels in a browser, saved at once to WORKDIR/review/verified_train.tsv.

    cleannet-review --workdir=/tmp/cleannet_demo                 # the config cleannet-verify ran with
    cleannet-review --config=configs/food101n.py --workdir=DIR --port=8765

Reads: WORKDIR/verify/ (scores.tsv, to_verify.tsv, metrics.json) and the dataset.
Writes: WORKDIR/review/verified_train.tsv and verified_val.tsv (every decision at once, by the plan's split);
with --retrain, reruns the train and verify steps on them in this process.
Holds the workdir lock while it serves: a second cleannet-review, a cleannet-run or any step command on the same
workdir is refused (one line naming this one), so the page and its Retrain are the workdir's only writer.
Serves on 127.0.0.1 (--host to change; --port=0 picks a free port) and prints the URL to open, with a
random access token: any request without it gets 403. Without --config, the newest of
WORKDIR/config.{verify,run,demo,review}.json is used (what the last run saved); `cleannet-config --show`
lists every field with its comment and default.
Errors print one line and exit 1; --debug (or --verbosity=1) adds the traceback.
"""

import getpass
import json
import os
import signal
import sys

import ml_collections
from absl import app, flags

from cleannet_tf import config as config_lib
from cleannet_tf.cli import flags as cli_flags

_SAVED_CONFIGS = ("config.verify.json", "config.run.json", "config.demo.json", "config.review.json")


def _config_given(argv: list[str]) -> bool:
    return any(arg == "--config" or arg.startswith("--config=") or arg.startswith("--config.") for arg in argv)


def _saved_config(workdir: str) -> ml_collections.ConfigDict:
    paths = [os.path.join(workdir, name) for name in _SAVED_CONFIGS if os.path.exists(os.path.join(workdir, name))]
    if not paths:
        raise app.UsageError(f"{workdir} has none of {', '.join(_SAVED_CONFIGS)}: pass --config (the config "
                             "cleannet-verify ran with).")
    path = max(paths, key=os.path.getmtime)
    with open(path) as f:
        saved = json.load(f)
    config = config_lib.default_config()  # fields newer than the saved file keep their defaults

    def merge(into: ml_collections.ConfigDict, values: dict) -> None:
        for name, value in values.items():
            if isinstance(value, dict) and isinstance(into.get(name), ml_collections.ConfigDict):
                merge(into[name], value)
            else:
                into[name] = value

    try:
        merge(config, saved)
        return config_lib.validate(config)
    except (TypeError, ValueError) as error:
        raise app.UsageError(f"{path}: {error}") from error


def main(argv):
    from cleannet_tf.pipeline import runner
    from cleannet_tf.review.retrain import Retrainer, recover
    from cleannet_tf.review.server import ReviewServer
    from cleannet_tf.review.session import ReviewSession, read_metrics

    if _config_given(sys.argv[1:]):
        config, workdir = cli_flags.setup(argv, "review")  # takes the workdir lock
    else:
        if len(argv) > 1:
            raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
        if not flags.FLAGS.workdir:
            raise app.UsageError("--workdir is required.")
        workdir = os.path.abspath(os.path.expanduser(flags.FLAGS.workdir))
        config = _saved_config(workdir)
        runner.start_command(config, workdir, "review")  # the workdir lock, held until the process ends
    recover(config, workdir)  # a retrain killed with an earlier server: its old outputs go back
    try:
        session = ReviewSession(config, workdir, user=flags.FLAGS.user or getpass.getuser())
    except (OSError, ValueError) as error:  # no cleannet-verify outputs yet, a bad dataset or review file
        raise app.UsageError(str(error)) from error
    retrainer = None
    if flags.FLAGS.retrain:
        retrainer = Retrainer(config, workdir, read_metrics=read_metrics,
                              on_finished=lambda succeeded: succeeded and session.reload())
    server = ReviewServer(session, retrainer, host=flags.FLAGS.host, port=flags.FLAGS.port)
    summary = session.summary()
    print(f"cleannet-review: {summary['proposed'] - summary['proposed_decided']} of {summary['proposed']} proposed "
          f"images to verify, {summary['decided']} decisions in {session.store.directory} "
          "(verified_train.tsv, verified_val.tsv)", flush=True)
    print(f"cleannet-review: open {server.url}   (Ctrl-C stops; every decision is saved at once)", flush=True)
    # Ctrl-C and SIGTERM stop it even when the parent started it with SIGINT ignored (e.g. a background job).
    for stop_signal in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop_signal, signal.default_int_handler)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


def _define_flags() -> None:
    """Defined when the command runs, not on import: cleannet-serve has its own --host and --port."""
    flags.DEFINE_string("host", "127.0.0.1", "Address to bind; anything but loopback lets other machines reach the "
                                             "page (they still need the token).")
    flags.DEFINE_integer("port", 0, "Port; 0 picks a free one.")
    flags.DEFINE_string("user", None, "Name saved with each decision (default: the login name).")
    flags.DEFINE_boolean("retrain", True, "Offer the Retrain button (reruns the train and verify steps in this "
                                          "process, under its workdir lock).")


def run():
    _define_flags()
    cli_flags.run(main)


if __name__ == "__main__":
    run()
