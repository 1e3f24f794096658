"""Fine-tuning EfficientNet-Lite0 on a CPU: the cached path (frozen part's outputs read, trained blocks + head
run) against full fine-tuning (every block, forward + backward from the image), measured in the same run.

    nice python benchmarks/finetune_speed.py --image_sizes=160 --train_from=block11
    nice python benchmarks/finetune_speed.py --image_sizes=128,160,224 --train_from=block11,block15,head

For each image size and split it prints, in training images per second (wall time) and CPU-seconds per 1000
images (user + system of every thread of this process):

  frozen forward   the frozen part on images (building the cache: paid once per image, per view)
  cached step      an SGD step of the trained part on float16 cached inputs (cast to float32), as in training
  full step        an SGD step of the whole network from the image, every layer trained (uncached)

and what that makes of a pool of --pool images: the cache's one-off cost and an epoch of each path. Images are
random tensors in memory (decoding is the same for both paths and is left out), weights random (speed does not
depend on them); BatchNorm in training mode in the trained layers, inference mode in the frozen ones.
"""

import resource
import time

import keras
import numpy as np
import tensorflow as tf
from absl import app, flags

from cleannet_tf.features import backbones, block_cache

_SIZES = flags.DEFINE_list("image_sizes", ["160"], "Square input resolutions to time.")
_TRAIN_FROM = flags.DEFINE_list("train_from", ["block11"], "First trained parts (block<k>, head, logits).")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Training batch size.")
_STEPS = flags.DEFINE_integer("steps", 8, "Timed steps of each kind (after 2 warm-up steps).")
_POOL = flags.DEFINE_integer("pool", 20000, "Training images the per-epoch figures are for.")
_FULL = flags.DEFINE_bool("full", True, "Also time full fine-tuning (every block, uncached).")


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _timed(step, batches, steps: int, batch_size: int) -> tuple[float, float]:
    """(images per wall second, CPU-seconds per 1000 images) of `step` over `steps` batches after 2 warm-ups."""
    for batch in batches[:2]:
        step(*batch)
    wall, cpu = time.perf_counter(), _cpu_seconds()
    for i in range(steps):
        outputs = step(*batches[i % len(batches)])
    keras.ops.convert_to_numpy(outputs)  # wait for the last step
    wall, cpu = time.perf_counter() - wall, _cpu_seconds() - cpu
    images = steps * batch_size
    return images / wall, 1000 * cpu / images


def _train_step_fn(model: keras.Model, num_classes: int):
    optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
    optimizer.build(model.trainable_variables)

    @tf.function(jit_compile=False)
    def step(inputs, labels):
        with tf.GradientTape() as tape:
            logits = model(inputs, training=True)["logits"]
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True))
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
        return loss

    return step


def main(argv):
    del argv
    rng = np.random.default_rng(0)
    batch, num_classes, pool = _BATCH.value, 10, _POOL.value
    labels = tf.constant(rng.integers(0, num_classes, batch), tf.int32)
    print(f"batch {batch}, {_STEPS.value} timed steps, pool {pool} images; CPU-s per 1000 images in brackets")
    for size in (int(s) for s in _SIZES.value):
        images = [tf.constant(rng.uniform(0, 255, (batch, size, size, 3)), tf.float32) for _ in range(2)]
        keras.utils.set_random_seed(0)
        classifier = backbones.build_classifier(
            backbones.build_backbone("efficientnet_lite0", image_size=(size, size)), num_classes)
        if _FULL.value:
            block_cache.set_trainable_from(classifier, "all")
            full_rate, full_cpu = _timed(_train_step_fn(classifier, num_classes),
                                         [(x, labels) for x in images], _STEPS.value, batch)
            print(f"{size}px full fine-tuning (every block, uncached): {full_rate:7.1f} img/s [{full_cpu:6.1f}]  "
                  f"epoch {pool / full_rate / 60:6.1f} min")
        for train_from in _TRAIN_FROM.value:
            frozen = block_cache.build_frozen_part(classifier.get_layer("backbone"), train_from)
            shape = block_cache.output_shape(frozen)
            forward = tf.function(lambda x, _, frozen=frozen: frozen(x, training=False)["frozen"])
            frozen_rate, frozen_cpu = _timed(forward, [(x, None) for x in images], _STEPS.value, batch)
            trained = block_cache.build_trained_part(shape, train_from, num_classes)
            cached = [tf.cast(tf.cast(forward(x, None), tf.float16), tf.float32) for x in images]
            cached_rate, cached_cpu = _timed(_train_step_fn(trained, num_classes), [(x, labels) for x in cached],
                                             _STEPS.value * 4, batch)
            mib = pool * int(np.prod(shape)) * 2 / 2 ** 20
            print(f"{size}px from {train_from:8s} cache {str(shape):15s} {mib:7.0f} MiB/view (float16)  "
                  f"frozen forward {frozen_rate:7.1f} img/s [{frozen_cpu:6.1f}] (cache fill "
                  f"{pool / frozen_rate / 60:5.1f} min)  cached step {cached_rate:7.1f} img/s [{cached_cpu:6.1f}]  "
                  f"epoch {pool / cached_rate / 60:6.2f} min", flush=True)


if __name__ == "__main__":
    app.run(main)
