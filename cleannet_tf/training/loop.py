"""The one custom training loop (orbit-style): a Task holds the replica math, `train` owns the rest.

A Task builds its model and optimizer, makes each input pipeline's per-replica
batches, and computes one replica's step (`strategy.run` body; its outputs are
summed over replicas). `train` owns everything around it: the seed, restoring
the latest checkpoint (a killed run resumes with the same data order), the step
loop, the log window, periodic evaluation, keeping the best model, TensorBoard
summaries, checkpoints, the history and metrics.json. The same code runs on one
CPU, under MirroredStrategy and under MultiWorkerMirroredStrategy; only the
chief writes output_dir (the other workers write a private temporary folder).

Imports `atomic_io`, `training` (checkpointing, distribute).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import keras
import tensorflow as tf
import tqdm
from absl import logging

from cleannet_tf import atomic_io
from cleannet_tf.training import checkpointing, distribute


def every(period: int, total_steps: int):
    """Step predicate: every `period` steps and at the last step."""
    return lambda step: step % period == 0 or step == total_steps


@dataclasses.dataclass
class Window:
    """The steps since the last log step: sums of the step outputs, step count, start time."""

    sums: dict = dataclasses.field(default_factory=dict)
    steps: int = 0
    start: float = dataclasses.field(default_factory=time.perf_counter)

    def add(self, logs: dict) -> None:
        for name, value in logs.items():
            self.sums[name] = self.sums.get(name, 0.0) + float(value)
        self.steps += 1

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start


@dataclasses.dataclass
class LoopState:
    """What `train` keeps: the step reached, history entries, the best evaluation and its step, seconds."""

    step: int = 0
    history: list = dataclasses.field(default_factory=list)
    best: dict | None = None
    best_step: int | None = None
    seconds: float = 0.0


class Task:
    """One training job on the loop. Subclasses set `name`, `total_steps` and implement the methods.

    `objective`: the key of `evaluate()`'s dict to minimise; the model of the best
    evaluation is kept as output_dir/model.keras. None: no evaluation in the loop,
    the final model is saved.
    """

    name = "task"
    total_steps = 0
    objective: str | None = None
    model: keras.Model
    optimizer: keras.optimizers.Optimizer

    def build(self) -> None:
        """Sets self.model and self.optimizer (called inside strategy.scope(), after the seed is set)."""
        raise NotImplementedError

    def dataset(self, context: tf.distribute.InputContext, start_step: int) -> tf.data.Dataset:
        """This input pipeline's per-replica batches from step start_step + 1 on."""
        raise NotImplementedError

    def replica_step(self, batch: dict) -> dict[str, tf.Tensor]:
        """One replica's step on its batch: applies the gradients; returns scalars summed over replicas."""
        raise NotImplementedError

    def is_log_step(self, step: int) -> bool:
        return step == self.total_steps

    def is_eval_step(self, step: int) -> bool:
        return False

    def is_checkpoint_step(self, step: int) -> bool:
        return step == self.total_steps

    def should_stop(self, step: int) -> bool:
        """True when training ends after `step`, before total_steps (early stopping); read after each step
        and, on a resumed run, at the restored step."""
        return False

    def checkpoint_items(self) -> dict:
        """Trackables (e.g. tf.Variables) saved in the checkpoint beside the model and optimizer."""
        return {}

    def log_entry(self, step: int, window: Window) -> tuple[dict, dict[str, float]]:
        """(history entry with "step", TensorBoard scalars) of a log step."""
        return {"step": step}, {}

    def evaluate(self, step: int) -> tuple[dict, dict[str, float]]:
        """(metrics stored under the history entry's "val", TensorBoard scalars)."""
        return {}, {}

    def finish(self) -> None:
        """After the last step, before the final model is saved and payload() (e.g. statistics to refresh)."""

    def payload(self, state: LoopState) -> dict:
        """The contents of metrics.json."""
        return {"step": state.step, "history": state.history}


def _restore_history(path: str, start_step: int, objective: str | None) -> LoopState:
    """The history of metrics.json up to start_step, and the best evaluation in it."""
    state = LoopState(step=start_step)
    if not start_step or not os.path.exists(path):
        return state
    with open(path) as f:
        previous = json.load(f)
    state.history = [h for h in previous.get("history", []) if h["step"] <= start_step]
    evaluated = [h for h in state.history if objective and h.get("val", {}).get(objective) is not None]
    if evaluated:
        best = min(evaluated, key=lambda h: (h["val"][objective], h["step"]))
        state.best, state.best_step = best["val"], best["step"]
    return state


def train(task: Task, output_dir: str, *, strategy: tf.distribute.Strategy | None = None, seed: int = 0,
          max_to_keep: int = 3, running_metrics: bool = True, progress: bool = True) -> tuple[keras.Model, dict]:
    """Trains `task` to task.total_steps, resuming from output_dir/checkpoints.

    Args:
        output_dir: model.keras, metrics.json, checkpoints/, logs/ (the chief's).
        running_metrics: write metrics.json at every history entry and continue its history after a restart.
            False (a step whose metrics.json marks it complete): the history covers this run only and
            metrics.json is written once, at the end.
        progress: a tqdm bar (on a terminal).

    Returns:
        (the model after the last step, task.payload of the final state).
    """
    strategy = strategy or tf.distribute.get_strategy()
    chief = distribute.is_chief(strategy)
    write_dir = checkpointing.worker_output_dir(strategy, output_dir)
    model_path, metrics_path = os.path.join(output_dir, "model.keras"), os.path.join(output_dir, "metrics.json")

    keras.utils.set_random_seed(seed)
    with strategy.scope():
        task.build()
        task.optimizer.build(task.model.trainable_variables)  # slots now, not lazily inside the replica function
    checkpoint = tf.train.Checkpoint(model=task.model, optimizer=task.optimizer, **task.checkpoint_items())
    manager = checkpointing.restore_latest(checkpoint, os.path.join(write_dir, "checkpoints"),
                                           max_to_keep=max_to_keep)
    start_step = int(task.optimizer.iterations.numpy())
    state = _restore_history(metrics_path, start_step, task.objective) if running_metrics else LoopState(start_step)

    iterator = None  # a run resumed at its last step trains no step: no input pipeline (it would be empty)
    if start_step < task.total_steps:
        iterator = iter(strategy.distribute_datasets_from_function(lambda context: task.dataset(context, start_step)))

    @tf.function
    def train_step(iterator):
        outputs = strategy.run(task.replica_step, args=(next(iterator),))
        return {name: strategy.reduce("SUM", value, axis=None) for name, value in outputs.items()}

    writer = tf.summary.create_file_writer(os.path.join(write_dir, "logs"))

    def summarize(step: int, scalars: dict[str, float]) -> None:
        with writer.as_default(step=step):
            for name, value in scalars.items():
                tf.summary.scalar(name, value)

    logging.info("Training %s from step %d to %d on %d replica(s).", task.name, start_step, task.total_steps,
                 strategy.num_replicas_in_sync)
    window = Window()
    start = time.perf_counter()
    with tqdm.tqdm(total=task.total_steps, initial=start_step, unit="step", desc=task.name,
                   disable=None if progress else True) as bar:
        for step in range(start_step + 1, task.total_steps + 1):
            if step > 1 and task.should_stop(step - 1):
                break
            window.add(train_step(iterator))
            state.step = step
            bar.update(1)
            entry = None
            if task.is_log_step(step):
                entry, scalars = task.log_entry(step, window)
                summarize(step, scalars)
                window = Window()
            if task.objective is not None and task.is_eval_step(step):
                entry = entry or {"step": step}
                val, scalars = task.evaluate(step)
                entry["val"] = val
                summarize(step, scalars)
                value = val.get(task.objective)
                if value is not None and (state.best is None or value < state.best[task.objective]):
                    state.best, state.best_step = val, step
                    if chief:
                        checkpointing.save_model(task.model, model_path)
            if entry is not None:  # before the checkpoint: a kill right after it keeps this step's entry
                state.history.append(entry)
                if chief and running_metrics:
                    checkpointing.write_json(metrics_path, task.payload(state))
            if task.is_checkpoint_step(step):
                checkpointing.save_checkpoint(manager, step)
    state.seconds = time.perf_counter() - start
    task.finish()
    if chief and task.objective is None:
        checkpointing.save_model(task.model, model_path)
    with atomic_io.naming_path(os.path.join(write_dir, "logs")):  # TensorBoard's event file
        writer.flush()
    payload = task.payload(state)
    if chief:
        checkpointing.write_json(metrics_path, payload)
    return task.model, payload
