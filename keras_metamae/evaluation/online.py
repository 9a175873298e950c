"""Online evaluation during pretraining: kNN and a converged linear probe on fixed labelled data.

Pretraining losses say little about the representation (the contrastive accuracy of MetaMAE
sits near 1.0 for the whole run, and the paper's 100-epoch probe cannot tell a trained encoder
from a random one on small data), so every `eval_every` steps `OnlineEvaluation` embeds a fixed
labelled subset with the frozen encoder (all tokens, no masking; the features `evaluate.py`
and serving use) and logs

- `online_eval/knn_accuracy`: cosine kNN accuracy (k = 20, majority vote, a tie broken by
  the nearest neighbour among the tied classes: `knn.knn_predict`, the rule evaluate uses, so the
  online figure and `evaluate`'s kNN are the same measurement) of the query examples against
  the bank; multiclass and binary tasks only;
- `online_eval/probe_<metric>`: `probes.converged_probe` (standardized features, L-BFGS
  logistic regression, ridge for regression) trained on the bank, its regularisation chosen
  among `PROBE_C_GRID` on a held-out 10% of the bank, scored on the queries with the spec's
  metric;

to TensorBoard (`<tensorboard>/online_eval`) at the true global step, the random-initialised
encoder at step 0, and the queries' features at step 0 and at the newest evaluation, with their
labels (and thumbnails of image-like data), for TensorBoard's Projector tab (`projector.py`).
The bank is the first `max_examples` examples of the spec's `probe_train` splits, the queries
the first `max_examples` of `probe_val` (else `probe_test`), in file order: the shards hold examples in a seeded, label-independent order, so this is a fixed uniform
sample, the same at every evaluation and on every resume.
"""

from __future__ import annotations

import logging
import math
import time

import keras
import numpy as np
import tensorflow as tf
from threadpoolctl import threadpool_limits

from keras_metamae.evaluation import projector
from keras_metamae.evaluation.knn import KNN_NEIGHBOURS
from keras_metamae.evaluation.knn import knn_accuracy
from keras_metamae.evaluation.probes import converged_probe

# Every other decade of `probes.CONVERGED_C_GRID` around C = 1 (what standardized features
# mostly pick): 4 L-BFGS fits instead of 10 keeps the online cost within 5% of training.
PROBE_C_GRID = (1e-2, 1.0, 1e2)
# Examples embedded per encoder call (inference only: larger than a training batch is fine).
_EMBED_BATCH = 256
# The subset's tokens stay in memory between evaluations up to this size (digits: 0.4 MB);
# larger ones (2,000 EuroSAT tiles: 430 MB) are read again each time.
_CACHE_BYTES = 256 * 2**20


def _labelled(spec, splits: list[str]) -> bool:
    return bool(splits) and all(spec.splits.get(s) and spec.splits[s].num_examples
                                for s in splits)


def subset_splits(spec) -> tuple[list[str], list[str]]:
    """(bank splits, query splits) from the spec's linear protocol; ValueError saying why when
    the dataset has no labelled data to evaluate on."""
    if spec.is_pretrain_only:
        raise ValueError("a pretrain-only dataset, it has no labels to probe")
    if spec.task == "per_token_multiclass":
        raise ValueError("per-token labels (the probe needs every token's features; run "
                         "keras_metamae.evaluate)")
    bank = spec.protocol_splits("probe_train")
    if not _labelled(spec, bank):
        raise ValueError(f"no labelled probe_train split {bank} in the spec")
    for role in ("probe_val", "probe_test"):
        queries = spec.protocol_splits(role)
        if _labelled(spec, queries):
            return bank, queries
    raise ValueError("no labelled probe_val or probe_test split in the spec")


class OnlineEvaluation(keras.callbacks.Callback):
    """Evaluates the frozen encoder at step 0 and every `every` steps (at the end of the first
    `log_every` chunk at or after each multiple), and at the end of training.

    A resumed run does not evaluate its start step again. `history` holds this process's
    records; `seconds` the time they took. Every worker of a multi-worker run evaluates (so no
    worker waits in a collective for the others), each writing to its own `logdir`: the chief's
    is the workdir's, the others' a scratch folder.
    """

    def __init__(self, spec, version_dir: str, logdir: str, every: int, max_examples: int,
                 seed: int = 0, k: int = KNN_NEIGHBOURS):
        super().__init__()
        self.spec = spec
        self.version_dir = version_dir
        self.every = every
        self.max_examples = max_examples
        self.seed = seed
        self.k = k
        self.bank_splits, self.query_splits = subset_splits(spec)
        # kNN votes on class ids; regression values and label sets have no majority.
        bank_size = self._size(self.bank_splits)
        self.knn_skipped = None
        if spec.task not in ("multiclass", "binary"):
            self.knn_skipped = f"{spec.task} labels have no class to vote for"
        elif bank_size < k:
            self.knn_skipped = f"the bank holds {bank_size} examples, fewer than k={k}"
        if self.knn_skipped:
            logging.info("online eval: no kNN accuracy: %s", self.knn_skipped)
        self.logdir = f"{logdir}/online_eval"
        self.writer = tf.summary.create_file_writer(self.logdir)
        self.projector = None  # made at the first evaluation (it needs the queries' labels)
        self.history: list[dict] = []
        self.seconds = 0.0
        self._next_step = 0
        self._embed = None
        self._cache: dict[tuple[str, ...], list] = {}

    def _step(self) -> int:
        """The true global step (the optimizer's counter survives restarts)."""
        return int(self.model.optimizer.iterations.numpy())

    # === the fixed subset and its features ===
    def _size(self, splits: list[str]) -> int:
        return min(self.max_examples, sum(self.spec.splits[s].num_examples for s in splits))

    def _batches(self, splits: list[str]):
        """The subset's (tokens, labels) batches, in file order: kept in memory after the first
        read when small, else read again (the same examples) at each evaluation."""
        from keras_metamae import data

        if tuple(splits) in self._cache:
            return self._cache[tuple(splits)]
        ds = data.make_dataset(self.spec, self.version_dir, splits, _EMBED_BATCH,
                               shuffle=False, repeat=False, drop_remainder=False)
        batches = ((batch["tokens"], batch["label"].numpy())
                   for batch in ds.take(math.ceil(self.max_examples / _EMBED_BATCH)))
        token_bytes = self.spec.num_tokens * (8 if self.spec.is_discrete
                                              else 4 * self.spec.token_dim)
        if self._size(splits) * token_bytes <= _CACHE_BYTES:
            batches = self._cache[tuple(splits)] = [(t.numpy(), y) for t, y in batches]
        return batches

    def _embed_split(self, splits: list[str], thumbnails: list | None = None):
        """(features, labels) of the subset; also appends the thumbnails of image-like tokens
        to `thumbnails` when given."""
        features, labels = [], []
        for tokens, label in self._batches(splits):
            if self._embed is None:
                self._embed = self._build_embed(tokens)
            features.append(self._embed(tokens).numpy())
            labels.append(label)
            if thumbnails is not None:
                thumbnails.append(projector.thumbnails(self.spec, np.asarray(tokens)))
        return (np.concatenate(features)[: self.max_examples],
                np.concatenate(labels)[: self.max_examples])


    def _build_embed(self, tokens):
        encoder = self.model.encoder
        # Traced once, for any batch size; float32 whatever the mixed-precision policy.
        signature = tf.TensorSpec([None, *tokens.shape[1:]], tokens.dtype)

        @tf.function(input_signature=[signature])
        def embed(tokens):
            return tf.cast(encoder.features(tokens, training=False), tf.float32)

        return embed

    def evaluate(self) -> dict:
        """Embeds the subset with the current encoder and scores it; logs and returns a record."""
        started = time.perf_counter()
        step = self._step()
        bank = self._embed_split(self.bank_splits)
        images = [] if self.projector is None and self.spec.is_image_like else None
        queries = self._embed_split(self.query_splits, images)
        if self.projector is None:
            self.projector = projector.ProjectorWriter(
                self.logdir, self.spec, queries[1],
                np.concatenate(images)[: len(queries[1])] if images else None)
        self.projector.write(step, queries[0])
        record = {"step": step}
        # One BLAS thread: these problems are small, and OpenBLAS threads competing with
        # TensorFlow's and other jobs' made the probe's L-BFGS 40x slower on 2 busy cores.
        with threadpool_limits(limits=1, user_api="blas"):
            if self.knn_skipped is None:
                record["knn_accuracy"] = knn_accuracy(bank[0], bank[1], queries[0], queries[1],
                                                      self.k)
            try:
                probe = converged_probe(self.spec, bank, None, queries, seed=self.seed,
                                                 strengths=PROBE_C_GRID)
                record[f"probe_{self.spec.metric}"] = float(probe["value"])
            except ValueError as e:  # e.g. AUROC of a query set without positives
                logging.warning("online eval at step %d: no probe figure (%s)", step, e)
        record["seconds"] = time.perf_counter() - started
        self.seconds += record["seconds"]
        with self.writer.as_default(step=step):
            for key, value in record.items():
                if key != "step":
                    tf.summary.scalar(f"online_eval/{key}", value)
        self.writer.flush()
        self.history.append(record)
        logging.info("online eval at step %d: %s", step,
                     ", ".join(f"{k} {v:.4f}" for k, v in record.items() if k != "step"))
        return record

    # === when ===
    def _due(self, step: int) -> bool:
        return step >= self._next_step and (not self.history or self.history[-1]["step"] != step)

    def _evaluate_and_schedule(self):
        self.evaluate()
        self._next_step = (self._step() // self.every + 1) * self.every

    def on_train_begin(self, logs=None):
        step = self._step()
        if step == 0:  # the random-initialised encoder; a resumed run has its figure already
            self._evaluate_and_schedule()
        else:
            self._next_step = (step // self.every + 1) * self.every

    def on_epoch_end(self, epoch, logs=None):
        if self._due(self._step()):
            self._evaluate_and_schedule()

    def on_train_end(self, logs=None):
        # The final encoder's figure, also when the run does not end on a multiple of `every`.
        if not self.history or self.history[-1]["step"] != self._step():
            self._evaluate_and_schedule()

    def summary(self, train_seconds: float) -> dict:
        """What `train_summary.json` records: the subset, first and last figures, the cost."""
        return {
            "every": self.every,
            "bank_splits": self.bank_splits,
            "query_splits": self.query_splits,
            "max_examples": self.max_examples,
            "knn_neighbours": self.k,
            "knn_skipped": self.knn_skipped,
            "first": self.history[0] if self.history else None,
            "last": self.history[-1] if self.history else None,
            "history": self.history,
            "seconds": self.seconds,
            # Of the whole fit (training, validation and these evaluations).
            "fraction_of_training_time": self.seconds / train_seconds if train_seconds else None,
        }


def from_config(config, spec, version_dir: str, logdir: str):
    """(the callback a run's config asks for, None) or (None, why there is none)."""
    if config.eval_every <= 0:
        return None, "--eval_every=0"
    if config.steps < config.eval_every:
        return None, (f"--steps={config.steps} < --eval_every={config.eval_every}, so no "
                      f"figure after step 0 to compare with")
    try:
        subset_splits(spec)
    except ValueError as e:
        return None, f"{spec.name}: {e}"
    return OnlineEvaluation(spec, version_dir, logdir, config.eval_every,
                            config.online_eval_examples, seed=config.seed), None


def summary_lines(online: dict) -> list[str]:
    """The run summary's online-evaluation lines: first -> last figure, and what they cost."""
    if "off" in online:
        return [f"{'online eval':<24} off ({online['off']})"]
    first, last = online.get("first"), online.get("last")
    if not last:
        return []
    lines = []
    for key in last:
        if key not in ("step", "seconds"):
            start = f"{first[key]:.4f} (step {first['step']}) -> " if key in first else ""
            lines.append(f"{'online ' + key:<24} {start}{last[key]:.4f} (step {last['step']})")
    if online.get("fraction_of_training_time") is not None:
        lines.append(f"{'online eval time':<24} {online['seconds']:.1f} s, "
                     f"{100 * online['fraction_of_training_time']:.1f}% of training")
    return lines
