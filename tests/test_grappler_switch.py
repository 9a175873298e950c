"""KERAS_METAMAE_GRAPPLER=off (set for the whole suite in conftest.py) turns TensorFlow's graph
optimizer off when the package is imported; anything else leaves TensorFlow's default."""

import json
import os
import subprocess
import sys

from tests.conftest import REPO

_PROBE = ("import json, keras_metamae, tensorflow as tf; "
          "print(json.dumps(tf.config.optimizer.get_experimental_options()))")


def _options(value):
    env = dict(os.environ, PYTHONPATH=REPO)
    env.pop("KERAS_METAMAE_GRAPPLER", None)
    if value is not None:
        env["KERAS_METAMAE_GRAPPLER"] = value
    done = subprocess.run([sys.executable, "-c", _PROBE], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_off_disables_the_meta_optimizer_and_the_default_keeps_it():
    import keras_metamae  # noqa: F401  (this process: conftest.py set the variable to off)
    import tensorflow as tf

    assert tf.config.optimizer.get_experimental_options().get("disable_meta_optimizer") is True
    assert not _options(None).get("disable_meta_optimizer", False)
