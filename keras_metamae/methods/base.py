"""What every pretraining method shares: the encoder f_theta on the dataset's tokens, masking
noise, the training step with its non-finite guard, logged losses, the weights format and the
config round trip.

A method is a `PretrainingMethod` subclass that builds its own networks after the encoder
(`build_objective_layers`) and says how a batch becomes losses (`compute_losses`). Methods
differ in their objective alone: the encoder and its embedding are the same for all of them.
"""

import inspect

import keras
import tensorflow as tf

from keras_metamae.methods.nonfinite import NonFiniteGuard
from keras_metamae.methods.nonfinite import agree_on_finite
from keras_metamae.models.encoder import Encoder
from keras_metamae.models.segments import normalize_segments
from keras_metamae.models.segments import packed_width

# Version of the set of weights a model holds, recorded with every checkpoint (see
# `rundir.checkpoints.CheckpointManager`) so that a workdir written by an incompatible version
# is refused with a clear message instead of failing to load. History:
# 1: attention qkv bias and a bias on the tied vocabulary head.
# 2: neither (the reference's timm blocks with qkv_bias=False; logits = h @ E^T).
WEIGHTS_FORMAT = 2

# Offset of the evaluation generator's seed from the model's: its masks differ from training's.
EVALUATION_SEED = 7919

# Constructor arguments that describe the data, not the method: they come from the dataset
# spec (`from_spec`), every other argument from the training config.
TOKEN_CONTRACT = ("num_tokens", "token_grid", "token_dim", "vocab_size", "segments")


class PretrainingMethod(keras.Model):
    """Base of the pretraining methods: an encoder on tokens plus a method's objective.

    Subclasses set `method_name` (the `--model` value), `metric_names` (the losses they log,
    `loss` first) and `noise_keys` (the uniform `[B, T]` noise tensors a step draws, in order),
    and implement `build_objective_layers`, `build_objective` and `compute_losses`.

    Batches: a dict with `"tokens"` and optionally the noise tensors named in `noise_keys`
    (fixing the randomness of a step); without them noise is drawn from the model's
    `keras.random.SeedGenerator(seed)` (different on each replica), whose state checkpoints
    keep, so a resumed run draws the masks it would have drawn. Evaluation draws from a second
    generator, reset at each `evaluate`: validation never moves the training draws, and the
    same weights on the same batches give the same loss. Other keys (`"label"`) are
    ignored. `call(tokens)` returns the encoder features `[B, embed_dim]` (the mean of the
    non-CLS output tokens), the representation every evaluation uses.

    Args:
        num_tokens: int, tokens per example T.
        token_grid: list of 1 or 2 ints, token layout (position embeddings, Nearby-S).
        token_dim: int, values per continuous token (0 for discrete tokens).
        vocab_size: int, vocabulary of discrete tokens (0 for continuous tokens).
        embed_dim: int, encoder width.
        encoder_depth: int, encoder blocks.
        encoder_heads: int, encoder attention heads.
        encoder_mlp_dim: int, encoder MLP width.
        dropout: float, encoder dropout P_drop.
        seed: int or None, seed of the noise generator.
        segments: None (single-modality tokens), or the spec's list of segment dicts (see
            `models.segments.normalize_segments`).
        **kwargs: `keras.Model` arguments (`name`, `dtype`).
    """

    method_name = None
    metric_names = ("loss",)
    noise_keys = ("mask_noise",)
    weights_format = WEIGHTS_FORMAT

    def __init__(
        self,
        num_tokens,
        token_grid,
        token_dim=0,
        vocab_size=0,
        embed_dim=256,
        encoder_depth=12,
        encoder_heads=8,
        encoder_mlp_dim=512,
        dropout=0.0,
        seed=None,
        segments=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        name = type(self).__name__
        segments = normalize_segments(segments)
        if segments:
            total = sum(seg["num_tokens"] for seg in segments)
            if total != int(num_tokens) or list(token_grid) != [total] or int(vocab_size) != 0 \
                    or int(token_dim) != packed_width(segments):
                raise ValueError(
                    f"{name}: with segments, num_tokens ({num_tokens}) must be their total "
                    f"({total}), token_grid ({list(token_grid)}) [{total}], vocab_size "
                    f"({vocab_size}) 0 and token_dim ({token_dim}) the packed width "
                    f"{packed_width(segments)}"
                )
        if (int(token_dim) > 0) == (int(vocab_size) > 0):
            raise ValueError(
                f"{name}: exactly one of token_dim ({token_dim}) and vocab_size "
                f"({vocab_size}) must be > 0"
            )
        grid_size = 1
        for g in token_grid:
            grid_size *= int(g)
        if len(token_grid) not in (1, 2) or grid_size != int(num_tokens):
            raise ValueError(
                f"{name}: token_grid={list(token_grid)} must be 1-D or 2-D with product "
                f"num_tokens={num_tokens}"
            )
        self.num_tokens = int(num_tokens)
        self.token_grid = [int(g) for g in token_grid]
        self.token_dim = int(token_dim)
        self.vocab_size = int(vocab_size)
        self.embed_dim = int(embed_dim)
        self.encoder_depth = int(encoder_depth)
        self.encoder_heads = int(encoder_heads)
        self.encoder_mlp_dim = int(encoder_mlp_dim)
        self.dropout = float(dropout)
        self.seed = seed
        self.segments = segments

    def build_networks(self, use_mask_token=False):
        """Creates f_theta, then the method's own networks, then the noise generator.

        Called at the end of the concrete method's `__init__`, once every argument is stored
        (a subclass of a method stores its own before calling `super().__init__`). The order
        is fixed: weight initializers draw their seeds when their layer
        is created, so the same order gives the same initial weights for the same seed.
        """
        self.encoder = Encoder(
            num_tokens=self.num_tokens,
            token_grid=self.token_grid,
            token_dim=self.token_dim,
            vocab_size=self.vocab_size,
            embed_dim=self.embed_dim,
            depth=self.encoder_depth,
            num_heads=self.encoder_heads,
            mlp_dim=self.encoder_mlp_dim,
            dropout=self.dropout,
            use_mask_token=use_mask_token,
            segments=self.segments,
            dtype=self.dtype_policy,
            name="encoder",
        )
        self.build_objective_layers()
        self.seed_generator = keras.random.SeedGenerator(self.seed, name="masking_seed_generator")
        # Created after every layer: initial weights stay those of earlier versions.
        self.evaluation_seed_generator = keras.random.SeedGenerator(
            self._evaluation_seed, name="evaluation_seed_generator")
        self.trackers = [keras.metrics.Mean(name=name) for name in self.metric_names]

    def build_objective_layers(self):
        """Creates the method's networks besides the encoder (decoder, heads, projector)."""
        raise NotImplementedError

    def build_objective(self):
        """Creates the weights of the method's networks (`build` has built the encoder)."""
        raise NotImplementedError

    def compute_losses(self, tokens, *noise, training=False):
        """The method's losses of a batch for given noise (one `[B, T]` tensor per
        `noise_keys` entry): a dict holding every name in `metric_names`, `loss` the one
        that is minimized. Differentiable w.r.t. every weight."""
        raise NotImplementedError

    # === from a config ===
    @classmethod
    def accepted_settings(cls) -> set:
        """Every constructor argument of `cls` (its own and its bases')."""
        accepted = set()
        for klass in cls.__mro__:
            if issubclass(klass, PretrainingMethod):
                accepted.update(inspect.signature(klass.__init__).parameters)
        return accepted - {"self", "kwargs"}

    @classmethod
    def from_settings(cls, **settings):
        """`cls` built from the settings it takes; the others are ignored (a training config
        holds every method's settings)."""
        accepted = cls.accepted_settings() | {"name", "dtype"}
        return cls(**{name: value for name, value in settings.items() if name in accepted})

    @classmethod
    def from_spec(cls, spec, **settings):
        """The method on a dataset spec's tokens; `settings` may hold any training-config
        field (see `from_settings`)."""
        settings = {name: value for name, value in settings.items() if name not in TOKEN_CONTRACT}
        return cls.from_settings(
            **settings,
            num_tokens=spec.num_tokens,
            token_grid=list(spec.token_grid),
            token_dim=spec.token_dim,
            vocab_size=spec.vocab_size,
            # Mixed-token (e.g. image + text) sequences; None for single-modality datasets.
            segments=list(getattr(spec, "segments", None) or []) or None,
        )

    # === properties ===
    @property
    def is_discrete(self):
        return self.vocab_size > 0

    @property
    def loss_dtype(self):
        """float32 under mixed precision (the variable dtype), float64 under float64."""
        return self.dtype_policy.variable_dtype

    @property
    def metrics(self):
        return list(self.trackers)

    # === building ===
    def build(self, tokens_shape=None):
        """Creates every weight from the config alone, so that a call on tokens, `fit`'s
        symbolic build and `.keras` loading all build the whole model."""
        if not self.encoder.built:
            if self.is_discrete:
                self.encoder.build((None, self.num_tokens))
            else:
                self.encoder.build((None, self.num_tokens, self.token_dim))
        self.build_objective()
        self.built = True

    def build_for_training(self, tokens=None):
        """Makes sure every weight used by `train_step` exists (see `build`)."""
        if not self.built:
            self.build()

    # === forward ===
    def call(self, tokens, training=None):
        """Encoder features `[B, embed_dim]` (mean of the non-CLS output tokens)."""
        if isinstance(tokens, dict):
            tokens = tokens["tokens"]
        return self.encoder.features(tokens, training=training)

    # === noise ===
    def draw_noise(self, shape, generator=None):
        """Uniform `[B, T]` noise from `generator` (the training one by default), different on
        each replica."""
        seed = tf.cast((generator or self.seed_generator).next(), tf.int64)
        ctx = tf.distribute.get_replica_context()
        if ctx is not None and ctx.num_replicas_in_sync > 1:
            replica = tf.cast(ctx.replica_id_in_sync_group, tf.int64)
            seed = seed + tf.stack([replica * 1_000_003, tf.constant(0, tf.int64)])
        return tf.random.stateless_uniform(shape, seed=seed, dtype=tf.float32)

    def unpack(self, data, generator=None):
        """(tokens, noise...) of a batch: the batch's noise tensors, or fresh draws from
        `generator` (see `draw_noise`)."""
        if isinstance(data, (tuple, list)):
            data = data[0]
        if not isinstance(data, dict):
            data = {"tokens": data}
        tokens = data["tokens"]
        shape = tf.shape(tokens)[:2]
        noise = []
        for key in self.noise_keys:
            value = data.get(key)
            value = (self.draw_noise(shape, generator) if value is None
                     else tf.cast(value, tf.float32))
            # Static T: the number of kept tokens is a Python int.
            noise.append(tf.ensure_shape(value, [None, self.num_tokens]))
        return (tokens, *noise)

    # === steps ===
    def update_trackers(self, losses):
        for tracker in self.trackers:
            tracker.update_state(losses[tracker.name])
        logs = {tracker.name: tracker.result() for tracker in self.trackers}
        if isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy):
            # Keras' fit fails to reduce scalar logs across workers (keras#20585): rank 1.
            logs = {name: tf.reshape(value, [1]) for name, value in logs.items()}
        return logs

    # === stopping together (multi-worker) ===
    def enable_stop_agreement(self):
        """From now on each training step sums every worker's stop request (`stop_request`,
        set by a signal handler between steps) into `stop_agreed`, so all workers see a
        request at the same step. Call in the strategy's scope before `fit` traces the step.
        Plain tf.Variables, kept off the Keras weights: checkpoints stay as they were."""
        object.__setattr__(self, "stop_request", tf.Variable(0.0, trainable=False))
        object.__setattr__(self, "stop_agreed", tf.Variable(
            0.0, trainable=False, aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA))

    def _agree_on_stop(self):
        context = tf.distribute.get_replica_context()
        requested = tf.identity(self.stop_request)
        if context is not None and context.num_replicas_in_sync > 1:
            requested = context.all_reduce("sum", requested)
        self.stop_agreed.assign(requested)

    def train_step(self, data):
        # Without a distribution strategy Keras builds nothing before tracing this step; build
        # the whole model here so that it counts as built (saving needs it).
        self.build_for_training()
        if getattr(self, "stop_agreed", None) is not None:
            self._agree_on_stop()
        tokens, *noise = self.unpack(data)
        # Keras sums the gradients of the replicas: scale each replica's loss by 1/replicas so
        # the update is that of the global-batch mean.
        num_replicas = tf.distribute.get_strategy().num_replicas_in_sync
        with tf.GradientTape() as tape:
            losses = self.compute_losses(tokens, *noise, training=True)
            scaled = self.optimizer.scale_loss(losses["loss"] / num_replicas)
        variables = self.trainable_variables
        gradients = tape.gradient(scaled, variables)
        if isinstance(self.optimizer, NonFiniteGuard):
            # All replicas skip a step together when any of them saw a NaN/Inf.
            gradients = agree_on_finite(losses["loss"], gradients)
        self.optimizer.apply(gradients, variables)
        return self.update_trackers(losses)

    def evaluate(self, *args, **kwargs):
        # `fit` validates through this too: each evaluation draws the same masks.
        if self.built:
            state = self.evaluation_seed_generator.state
            state.assign(tf.constant([self._evaluation_seed, 0], state.dtype))
        return super().evaluate(*args, **kwargs)

    @property
    def _evaluation_seed(self):
        return EVALUATION_SEED if self.seed is None else self.seed + EVALUATION_SEED

    def test_step(self, data):
        self.build_for_training()
        tokens, *noise = self.unpack(data, self.evaluation_seed_generator)
        losses = self.compute_losses(tokens, *noise, training=False)
        return self.update_trackers(losses)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_tokens": self.num_tokens,
                "token_grid": self.token_grid,
                "token_dim": self.token_dim,
                "vocab_size": self.vocab_size,
                "embed_dim": self.embed_dim,
                "encoder_depth": self.encoder_depth,
                "encoder_heads": self.encoder_heads,
                "encoder_mlp_dim": self.encoder_mlp_dim,
                "dropout": self.dropout,
                "seed": self.seed,
                "segments": self.segments,
            }
        )
        return config
