"""Central finite differences for the gradient tests (float64).

The default step is 1e-6: the truncation error of a central difference is O(h^2) ~ 1e-12 and the
rounding error O(eps * |f| / h) ~ 1e-10 * |f|, so a relative error of 1e-6 leaves a wide margin
while a wrong formula (a missing factor, a transposed weight, a stale buffer) is off by O(1).

A plain module, not a test file: the test modules import it as ``from gradcheck import ...``
(pytest puts this directory on sys.path, as it has no __init__.py).
"""

import numpy as np

H = 1e-6
RTOL = 1e-6


def difference_at(f, array, index, h=H):
    """d f() / d array[index] by a central difference, perturbing array[index] in place (restored
    after)."""
    original = array[index]
    array[index] = original + h
    up = f()
    array[index] = original - h
    down = f()
    array[index] = original
    return (up - down) / (2 * h)


def central_difference(f, array, h=H):
    """d f() / d array by central differences, perturbing `array` in place (restored after)."""
    grad = np.zeros(array.shape)
    flat = array.reshape(-1)  # must be a view: array is C-contiguous
    assert np.shares_memory(flat, array)
    for i in range(flat.size):
        grad.reshape(-1)[i] = difference_at(f, flat, i, h)
    return grad


def assert_gradient_close(analytic, numeric, what, rtol=RTOL, reshape=False):
    """Relative error of the whole gradient and of each element, against its norm.

    `analytic` must have `numeric`'s shape; with reshape=True it need only have as many elements,
    and is compared in `numeric`'s shape."""
    analytic = np.asarray(analytic, dtype=np.float64)
    if reshape:
        assert analytic.size == numeric.size, (what, analytic.shape, numeric.shape)
        analytic = analytic.reshape(numeric.shape)
    assert analytic.shape == numeric.shape, (what, analytic.shape, numeric.shape)
    assert np.all(np.isfinite(analytic)), what
    scale = max(np.linalg.norm(numeric), np.linalg.norm(analytic))
    assert scale > 0, f"{what}: the gradient is identically zero; the check would prove nothing"
    error = np.linalg.norm(analytic - numeric) / scale
    assert error < rtol, f"{what}: relative error {error:.3g}"
    # Elementwise too, so that a single wrong entry cannot hide in the norm of a large tensor.
    np.testing.assert_allclose(analytic, numeric, rtol=10 * rtol, atol=rtol * scale, err_msg=what)
