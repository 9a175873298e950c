"""Gradient checks shared by the methods' tests: analytic gradients against float64 central
finite differences of the whole loss."""

import numpy as np


def assert_matches_finite_differences(model, inputs, variables, grads, eps=1e-6, samples=2):
    """Each analytic gradient entry (a few random ones per variable) equals the float64
    central difference of the full loss `model.compute_losses(*inputs, training=True)`."""
    rng = np.random.default_rng(1)
    for variable, grad in zip(variables, grads):
        base = variable.numpy()
        grad = np.asarray(grad)
        for _ in range(samples):
            index = tuple(rng.integers(0, n) for n in base.shape)
            values = []
            for sign in (1.0, -1.0):
                perturbed = base.copy()
                perturbed[index] += sign * eps
                variable.assign(perturbed)
                values.append(float(model.compute_losses(*inputs, training=True)["loss"]))
            variable.assign(base)
            numeric = (values[0] - values[1]) / (2 * eps)
            np.testing.assert_allclose(
                grad[index], numeric, rtol=1e-5, atol=1e-9, err_msg=variable.path
            )


def training_step_gradients(model, batch):
    """The gradients the model's own `train_step` computes on `batch`, run as training runs
    it: Keras' compiled train function (`tf.function`) through `train_on_batch`. An SGD step
    of learning rate 1 moves each weight by exactly its gradient, read back as `before -
    after` (exact in float64 up to the last bit of the weight); the weights are restored."""
    import keras

    variables = model.trainable_variables
    before = [v.numpy() for v in variables]
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=1.0), jit_compile=False)
    model.train_on_batch(batch)
    grads = [b - v.numpy() for b, v in zip(before, variables)]
    for variable, value in zip(variables, before):
        variable.assign(value)
    return grads


def assert_directional_derivatives_match(loss, variables, grads, eps=1e-6, rtol=1e-5, seed=1):
    """For every variable, the analytic gradient's projection on a random unit direction of
    that variable equals the float64 central difference of `loss()` along it: each entry of
    every variable counts, not a sample of entries. Returns the worst relative error."""
    rng = np.random.default_rng(seed)
    worst = 0.0
    for variable, grad in zip(variables, grads):
        base = variable.numpy()
        direction = rng.normal(size=base.shape)
        direction /= np.linalg.norm(direction)
        values = []
        for sign in (1.0, -1.0):
            variable.assign(base + sign * eps * direction)
            values.append(float(loss()))
        variable.assign(base)
        numeric = (values[0] - values[1]) / (2 * eps)
        analytic = float(np.sum(np.asarray(grad) * direction))
        error = abs(analytic - numeric) / max(abs(numeric), 1e-8)
        assert error < rtol, (f"{variable.path}: gradient . direction {analytic!r}, "
                              f"finite difference {numeric!r} (relative error {error:.2e})")
        worst = max(worst, error)
    return worst
