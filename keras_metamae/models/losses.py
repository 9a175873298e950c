"""MetaMAE losses: token reconstruction (MSE / cross-entropy over a target set of tokens) and the
symmetric task-contrastive NT-Xent loss (paper Eq. 3-4), replica-aware.

All functions take TF tensors and compute in the dtype of their inputs; callers cast to float32
(or float64 in the finite-difference tests) first.
"""

import tensorflow as tf


def per_token_reconstruction_error(targets, predictions, discrete=False):
    """`[B, T]` error of each token.

    Continuous: the mean over the token's values of the squared error (`targets` and
    `predictions` `[B, T, token_dim]`). Discrete: the cross-entropy of the logits
    `predictions` `[B, T, vocab_size]` against the int ids `targets` `[B, T]`.
    """
    if discrete:
        return tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=tf.cast(targets, tf.int32), logits=predictions
        )
    targets = tf.cast(targets, predictions.dtype)
    return tf.reduce_mean(tf.square(predictions - targets), axis=-1)


def per_example_reconstruction_loss(targets, predictions, target_mask, discrete=False):
    """`[B]`: for each example, the mean error over its target tokens (`target_mask` `[B, T]`,
    1.0 on target tokens). An example without target tokens has loss 0."""
    error = per_token_reconstruction_error(targets, predictions, discrete)
    target_mask = tf.cast(target_mask, error.dtype)
    total = tf.reduce_sum(error * target_mask, axis=1)
    count = tf.reduce_sum(target_mask, axis=1)
    return total / tf.maximum(count, 1.0)


def reconstruction_loss(targets, predictions, target_mask, discrete=False):
    """Scalar: the mean error over all target tokens of the batch (`target_mask` `[B, T]`,
    1.0 on target tokens); tokens outside the target set do not contribute."""
    error = per_token_reconstruction_error(targets, predictions, discrete)
    target_mask = tf.cast(target_mask, error.dtype)
    return tf.reduce_sum(error * target_mask) / tf.maximum(tf.reduce_sum(target_mask), 1.0)


# === mixed-token (segmented) sequences ===
# The per-token errors of each segment are those above (MSE over the token's values for a
# continuous segment, cross-entropy over the vocabulary for a discrete one). They are combined
# per segment kind, never mixed in one mean: the loss is the SUM over segments of the MEAN error
# over that segment's target tokens (an empty target set contributes 0). So an image-text
# sequence is reconstructed with `mean MSE over masked image tokens + mean cross-entropy over
# masked text tokens`, whatever the number of tokens of each kind.
def _segment_errors(targets, predictions, target_mask, kinds):
    sizes = [int(p.shape[1]) for p in predictions]
    masks = tf.split(target_mask, sizes, axis=1)
    for target, prediction, mask, kind in zip(targets, predictions, masks, kinds):
        error = per_token_reconstruction_error(target, prediction, discrete=kind == "discrete")
        yield error, tf.cast(mask, error.dtype)


def segmented_per_example_reconstruction_loss(targets, predictions, target_mask, kinds):
    """`[B]`: for each example, the sum over segments of its mean error over that segment's
    target tokens. `targets`/`predictions`: lists with one entry per segment (continuous
    `[B, n, dim]` values, discrete `[B, n]` ids / `[B, n, vocab]` logits); `target_mask`
    `[B, T]` over the whole sequence; `kinds`: "continuous"/"discrete" per segment."""
    total = 0.0
    for error, mask in _segment_errors(targets, predictions, target_mask, kinds):
        total += tf.reduce_sum(error * mask, axis=1) / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)
    return total


def segmented_reconstruction_loss(targets, predictions, target_mask, kinds):
    """Scalar: the sum over segments of the mean error over all of the batch's target tokens
    of that segment (see `segmented_per_example_reconstruction_loss` for the arguments)."""
    total = 0.0
    for error, mask in _segment_errors(targets, predictions, target_mask, kinds):
        total += tf.reduce_sum(error * mask) / tf.maximum(tf.reduce_sum(mask), 1.0)
    return total


def _gather_across_replicas(*tensors):
    """`(gathered tensors, offset of this replica's rows)`.

    Under a multi-replica `tf.distribute` strategy (called in replica context) each tensor is
    all-gathered on axis 0 (gradients flow back to the replica that owns each row) and the
    offset is the number of rows held by the replicas before this one; otherwise the tensors
    are returned as they are with offset 0. The tensors must have the same number of rows."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return list(tensors), 0
    gathered = [ctx.all_gather(t, axis=0) for t in tensors]
    # Rows per replica may differ (a last partial batch), so offsets come from the gathered
    # sizes rather than from replica_id * local size.
    sizes = ctx.all_gather(tf.shape(tensors[0])[:1], axis=0)
    replica_id = tf.cast(ctx.replica_id_in_sync_group, tf.int32)
    offset = tf.reduce_sum(sizes[:replica_id])
    return gathered, offset


def nt_xent(z, z_star, temperature=0.5, cross_replica=True):
    """Symmetric NT-Xent between two views (paper Eq. 3-4, SimCLR's loss).

    The 2B representations are L2-normalized; each of them is a query against the other
    2B - 1 (its own similarity excluded), with the other view of the same example as the
    positive. The loss is the mean over the 2B queries, i.e. the mean over examples of
    `(l_con(z; z*) + l_con(z*; z)) / 2`.

    With `cross_replica=True` under a distribution strategy, the keys are gathered from all
    replicas, so the local loss is the mean over this replica's queries of the same terms as
    on one device with the global batch: averaging the per-replica losses gives exactly the
    single-device loss.

    Args:
        z: `[B, D]` the amortized view (h(pool(Z))).
        z_star: `[B, D]` the adapted view (h(pool(Z*))).
        temperature: float, tau.
        cross_replica: bool, gather keys across replicas.

    Returns:
        `(loss, accuracy)`: scalar loss; fraction of queries whose most similar key (self
        excluded) is the positive.
    """
    z = tf.math.l2_normalize(z, axis=-1)
    z_star = tf.math.l2_normalize(z_star, axis=-1)
    if cross_replica:
        (keys_z, keys_z_star), offset = _gather_across_replicas(z, z_star)
    else:
        keys_z, keys_z_star, offset = z, z_star, 0
    local = tf.shape(z)[0]
    total = tf.shape(keys_z)[0]
    queries = tf.concat([z, z_star], axis=0)  # [2b, D]
    keys = tf.concat([keys_z, keys_z_star], axis=0)  # [2B, D]
    logits = tf.matmul(queries, keys, transpose_b=True) / temperature  # [2b, 2B]

    rows = offset + tf.range(local)  # global index of each local example
    self_index = tf.concat([rows, total + rows], axis=0)
    positive_index = tf.concat([total + rows, rows], axis=0)
    # Exclude each query's similarity with itself. A finite large value keeps gradients finite.
    self_mask = tf.one_hot(self_index, 2 * total, dtype=logits.dtype)
    logits = logits - self_mask * tf.cast(1e9, logits.dtype)

    loss = tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=positive_index, logits=logits)
    )
    accuracy = contrastive_accuracy(logits, positive_index)
    return loss, accuracy


def contrastive_accuracy(logits, positive_index):
    """Fraction of rows of `logits` whose argmax is `positive_index` (float32 scalar)."""
    predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
    correct = tf.equal(predicted, tf.cast(positive_index, tf.int32))
    return tf.reduce_mean(tf.cast(correct, tf.float32))


def masked_mean(error, mask):
    """Scalar: mean of `error` `[B, n]` over the entries where `mask` is 1.0 (0 if none)."""
    mask = tf.cast(mask, error.dtype)
    return tf.reduce_sum(error * mask) / tf.maximum(tf.reduce_sum(mask), 1.0)


def l2_error(targets, predictions):
    """`[B, n]` un-squared Euclidean distance between each token's target and prediction.

    Exactly equal vectors give distance 0 with gradient 0 (a subgradient of the norm there;
    a plain square root would give NaN)."""
    squared = tf.reduce_sum(tf.square(tf.cast(targets, predictions.dtype) - predictions), -1)
    positive = squared > 0
    safe = tf.where(positive, squared, tf.ones_like(squared))
    return tf.where(positive, tf.sqrt(safe), tf.zeros_like(squared))
