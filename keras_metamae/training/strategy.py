"""Where the training step runs: the distribution strategy and whether XLA compiles it."""

from __future__ import annotations

import logging
import os


def uses_multiworker(name: str) -> bool:
    return name == "multiworker" or (name == "auto" and bool(os.environ.get("TF_CONFIG")))


def build_strategy(name: str, worker_timeout_s: float = 300.0):
    import tensorflow as tf

    # Before anything lists devices: collectives are configured at program startup only.
    if uses_multiworker(name):
        from keras_metamae.training import multiworker

        return multiworker.start_strategy(worker_timeout_s)
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        if len(gpus) > 1:
            name = "mirrored"
        else:
            name = "default"
    if name == "mirrored":
        # All GPUs; without GPUs, every logical CPU device (how the tests split one CPU in two).
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        return tf.distribute.MirroredStrategy(devices=devices)
    if name == "onedevice":
        return tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")
    return tf.distribute.get_strategy()


def resolve_jit(setting: str, strategy) -> bool | str:
    import tensorflow as tf

    if setting == "off":
        return False
    if setting == "on":
        if strategy.num_replicas_in_sync > 1:
            logging.warning("--jit_compile=on ignored under %d replicas: XLA is not forced "
                            "under a distribution strategy", strategy.num_replicas_in_sync)
            return False
        return True
    # auto: XLA where it pays and is safe — one GPU replica. On CPU, compiling the
    # second-order graph costs more than it saves on a short run.
    return bool(tf.config.list_logical_devices("GPU")) and strategy.num_replicas_in_sync == 1
