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
