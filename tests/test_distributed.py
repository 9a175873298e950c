"""The training entry point under MirroredStrategy on 2 logical CPU devices (a subprocess,
because logical devices must be configured before TensorFlow initializes)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from tests.conftest import REPO, TINY_MODEL


def test_train_entry_point_and_nonfinite_guard_on_two_replicas(digits_data_dir, tmp_path):
    # One strategy per process (two MirroredStrategy objects in one process share collective
    # instance keys), so each part runs in its own subprocess.
    train_part = _run_on_two_cpus(f"""
        from keras_metamae.training.run import run_training
        from keras_metamae.training.strategy import build_strategy
        summary = run_training(
            "digits", dict({TINY_MODEL!r}, steps=4, batch_size=16, log_every=2,
                           checkpoint_every=2, validation_steps=1, warmup_steps=1,
                           strategy="mirrored", export=False, eval_every=4,
                           online_eval_examples=64),
            {digits_data_dir!r}, {str(tmp_path / "run")!r}, verbose=0)
        import tensorflow as tf
        print(json.dumps(dict(final_step=summary["final_step"], loss=summary["last"]["loss"],
                              replicas=len(tf.config.list_logical_devices("CPU")),
                              online=summary["online_eval"]["history"])))
    """)
    assert train_part["replicas"] == 2
    assert train_part["final_step"] == 4 and train_part["loss"] == train_part["loss"]
    # Online evaluation embeds with the mirrored encoder: the random one at step 0, then step 4.
    assert [record["step"] for record in train_part["online"]] == [0, 4]
    assert all(0 <= record["knn_accuracy"] <= 1 for record in train_part["online"])
    config = json.load(open(tmp_path / "run" / "config.json"))
    assert config["strategy"] == "mirrored"

    guard_part = _run_on_two_cpus(f"""
        import keras, numpy as np, tensorflow as tf
        from keras_metamae.training.run import run_training
        from keras_metamae.training.strategy import build_strategy
        from keras_metamae.methods.metamae import MetaMAE
        from keras_metamae.methods.nonfinite import NonFiniteGuard
        strategy = build_strategy("mirrored")
        with strategy.scope():
            model = MetaMAE(num_tokens=16, token_grid=[4, 4], token_dim=4, mask_ratio=0.5,
                            seed=0, **{TINY_MODEL!r})
            model.compile(optimizer=NonFiniteGuard(keras.optimizers.AdamW(1e-3)))
        def batch_of(tokens):  # a batched dataset, so the strategy splits it 4 + 4
            return tf.data.Dataset.from_tensor_slices({{"tokens": tokens}}).batch(8)

        tokens = np.random.default_rng(0).normal(size=(8, 16, 4)).astype("float32")
        model.fit(batch_of(tokens), epochs=1, verbose=0)
        before = [v.numpy().copy() for v in model.trainable_variables]
        tokens[6, 0, 0] = np.nan  # only the second replica's half of the batch is bad
        model.fit(batch_of(tokens), epochs=1, verbose=0)
        unchanged = all(np.array_equal(a, v.numpy())
                        for a, v in zip(before, model.trainable_variables))
        print(json.dumps(dict(replicas=strategy.num_replicas_in_sync, unchanged=unchanged,
                              skipped=int(model.optimizer.skipped_steps.numpy()),
                              step=int(model.optimizer.iterations.numpy()))))
    """)
    assert guard_part["replicas"] == 2
    assert guard_part["unchanged"] and guard_part["skipped"] == 1 and guard_part["step"] == 1


def _run_on_two_cpus(body: str) -> dict:
    script = textwrap.dedent("""
        import json
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    """) + textwrap.dedent(body)
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
