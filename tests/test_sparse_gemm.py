"""The product that skips an operand's zeros (csrc/sparse_gemm.c) against float64 references: on
its own through ``_core.gemm(sparse=...)``, and as a linear layer's forward and backward run it.

The kernel takes a product as sparse only when A (or, in "either" mode, B, for k up to 1024) has
at most 60% nonzeros, 16 rows (B: columns) and 2^20 multiply-adds; else it is the dense
product. The shapes here are chosen on both sides
of those limits, with k and n that are and are not multiples of its 64-step words and 64-column
blocks (32 for float64), and k over its 1024-step panels, so that every edge of the masks and
panels is reached.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastnet as fn
from fastnet import _core

DTYPES = [np.float32, np.float64]


def eps_of(dtype):
    return float(np.finfo(dtype).eps)


def sparse_operands(m, k, n, trans_a, trans_b, density, dtype, rng, b_density=1.0):
    """Stored a and b (fractions `density` and `b_density` of them nonzero), transposed in
    storage when asked, and op(a), op(b) in float64."""
    op_a = rng.standard_normal((m, k))
    op_a[rng.random((m, k)) >= density] = 0
    op_b = rng.standard_normal((k, n))
    op_b[rng.random((k, n)) >= b_density] = 0
    a = np.ascontiguousarray((op_a.T if trans_a else op_a).astype(dtype))
    b = np.ascontiguousarray((op_b.T if trans_b else op_b).astype(dtype))
    return a, b, (a.T if trans_a else a).astype(np.float64), (b.T if trans_b else b).astype(
        np.float64)


def assert_within(c, expected, bound, what):
    excess = np.abs(c.astype(np.float64) - expected) - bound
    assert np.all(excess <= 0), f"{what}: off by up to {excess.max():.3g} past the bound"


SHAPES = [  # m, k, n
    (128, 1024, 1024),  # a linear layer's input gradient (batch, in) = (batch, out) @ (out, in)
    (200, 64, 96),      # one word of k, a block and a half of columns
    (64, 130, 200),     # k past two words, n past three blocks
    (33, 700, 65),      # a row past a block of 32 rows, n one past a block
    (20, 100, 1000),    # few rows, over the 16 the sparse path needs
    (24, 2200, 70),     # k over two panels of 1024 steps and a part
    (8, 200, 1000),     # too few rows: the dense product
    (40, 20, 30),       # too small: the dense product
]


# (mode, a's density, b's density): A sparse, B sparse (the transposed product, in "either"
# mode only), both dense (the dense product). The limit is 60% nonzeros with AVX-512 and 35%
# without (_core.sparse_max_density()): 0.3 is sparse in every build, 0.55 only with AVX-512.
DENSITIES = [("a", 0.0, 1.0), ("a", 0.3, 1.0), ("a", 0.55, 1.0), ("a", 0.9, 1.0),
             ("either", 0.5, 0.3), ("either", 0.3, 0.5), ("either", 0.9, 0.0),
             ("either", 0.9, 0.9)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trans_a", [False, True], ids=["N", "T"])
@pytest.mark.parametrize("trans_b", [False, True], ids=["N", "T"])
@pytest.mark.parametrize("mode, density, b_density", DENSITIES)
@pytest.mark.parametrize("m, k, n", SHAPES, ids=[f"{m}x{k}x{n}" for m, k, n in SHAPES])
def test_sparse_product_matches_float64(dtype, trans_a, trans_b, mode, density, b_density, m, k,
                                        n, threads):
    rng = np.random.default_rng(m * 7919 + k * 31 + n)
    a, b, op_a, op_b = sparse_operands(m, k, n, trans_a, trans_b, density, dtype, rng, b_density)
    c0 = rng.standard_normal((m, n)).astype(dtype)
    for beta in (0.0, 1.0, -0.5):
        out = c0.copy()
        _core.gemm(a, b, trans_a=trans_a, trans_b=trans_b, sparse=mode, threads=threads,
                   out=out, beta=beta)
        expected = op_a @ op_b + beta * c0.astype(np.float64)
        bound = (k + 3) * eps_of(dtype) * (np.abs(op_a) @ np.abs(op_b) + abs(beta) *
                                          np.abs(c0.astype(np.float64)))
        assert_within(out, expected, bound, f"beta={beta}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trans_a", [False, True], ids=["N", "T"])
@pytest.mark.parametrize("mode, density, b_density", [("a", 0.3, 1.0), ("either", 0.9, 0.3)])
def test_sparse_bits_do_not_depend_on_the_thread_count(dtype, trans_a, mode, density,
                                                       b_density):
    rng = np.random.default_rng(3)
    a, b, _, _ = sparse_operands(150, 300, 333, trans_a, False, density, dtype, rng, b_density)
    one = _core.gemm(a, b, trans_a=trans_a, sparse=mode, threads=1)
    for threads in (2, 3, 5):
        np.testing.assert_array_equal(
            _core.gemm(a, b, trans_a=trans_a, sparse=mode, threads=threads), one)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode, density, b_density", [("a", 0.3, 1.0), ("either", 1.0, 0.3)])
def test_sparse_with_beta_0_ignores_what_c_held(dtype, mode, density, b_density, threads):
    # beta 0 writes the product, not 0 * C: a NaN or infinity left in C must not survive.
    rng = np.random.default_rng(4)
    a, b, op_a, op_b = sparse_operands(64, 256, 128, False, False, density, dtype, rng,
                                       b_density)
    a[5] = 0  # a row of zeros: its row of C is written without a single multiply-add
    b[:, 7] = 0  # and a column of zeros
    out = np.full((64, 128), np.nan, dtype=dtype)
    out[::2] = np.inf
    _core.gemm(a, b, sparse=mode, threads=threads, out=out)
    assert np.isfinite(out).all()
    assert (out[5] == 0).all() and (out[:, 7] == 0).all()
    np.testing.assert_allclose(out, (a.astype(np.float64) @ b.astype(np.float64)),
                               rtol=300 * eps_of(dtype), atol=300 * eps_of(dtype) * 16)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trans_a", [False, True], ids=["N", "T"])
def test_a_nan_in_a_reaches_its_row_of_c(dtype, trans_a, threads):
    rng = np.random.default_rng(5)
    a, b, _, _ = sparse_operands(64, 256, 128, trans_a, False, 0.3, dtype, rng)
    if trans_a:
        a[17, 9] = np.nan  # op(A)[9, 17]
    else:
        a[9, 17] = np.nan
    c = _core.gemm(a, b, trans_a=trans_a, sparse="a", threads=threads)
    assert np.isnan(c[9]).all()
    assert np.isfinite(np.delete(c, 9, axis=0)).all()


def sparse_path_taken(a, b, trans_a, threads):
    """Whether fastnet's product skipped op(A)'s zeros, seen from outside: an infinity placed in a
    row of op(B) that only zeros of op(A) meet reaches C (as 0 * inf) only in the dense product.
    Also checks the rest of C against float64."""
    op_a = (a.T if trans_a else a).astype(np.float64)
    zero_column = int(np.flatnonzero(~op_a.any(axis=0))[0])
    b = b.copy()
    b[zero_column, 3] = np.inf
    c = _core.gemm(a, b, trans_a=trans_a, sparse="a", threads=threads)
    rest = np.delete(c, 3, axis=1)
    op_b = np.delete(b.astype(np.float64), 3, axis=1)
    bound = (op_a.shape[1] + 2) * eps_of(a.dtype) * (np.abs(op_a) @ np.abs(op_b))
    assert_within(rest, op_a @ op_b, bound, "the columns without the infinity")
    return bool(np.isfinite(c[:, 3]).all())


@pytest.mark.parametrize("trans_a", [False, True], ids=["N", "T"])
def test_a_sample_of_rows_decides_only_far_from_the_limit(trans_a, threads):
    """A stored A of 64 rows or more is first counted on one row in 8; a sample that puts it past
    1.1 times the limit (60% nonzeros with AVX-512, 35% without) makes the product dense without
    the whole count, and otherwise the whole count decides, as before."""
    limit = _core.sparse_max_density()
    assert limit in (0.6, 0.35)
    rng = np.random.default_rng(6)
    stored_rows, stored_columns = 128, 320  # op(A) is 128 x 320, or 320 x 128 transposed
    k = stored_rows if trans_a else stored_columns

    def stored(nonzero):
        values = rng.standard_normal((stored_rows, stored_columns)).astype(np.float32)
        values[~nonzero] = 0
        op = values.T if trans_a else values
        op[:, 11] = 0  # a column of op(A) that only zeros meet
        return values

    b = rng.standard_normal((k, 128)).astype(np.float32)  # whole 64-column blocks
    uniform = rng.random((stored_rows, stored_columns))
    # Uniform densities: the whole count decides just below and just past the limit (within 1.1
    # times it, where the sample cannot), the sample at 0.95.
    for density, sparse in ((0.5 * limit, True), (limit - 0.05, True), (limit + 0.03, False),
                            (0.95, False)):
        assert sparse_path_taken(stored(uniform < density), b, trans_a, threads) is sparse, \
            density
    rows = np.arange(stored_rows)[:, None] % 8 == 0
    # Only the sampled rows nonzero (1/8 of A): the sample reads them all and takes the product
    # as dense, the whole count not made.
    assert not sparse_path_taken(stored(np.broadcast_to(rows, uniform.shape)), b, trans_a,
                                 threads)
    # Every row but the sampled ones nonzero (7/8 of A): the sample reads only zeros, the whole
    # count then finds it too dense.
    assert not sparse_path_taken(stored(np.broadcast_to(~rows, uniform.shape)), b, trans_a,
                                 threads)
    # Every row but the sampled ones at a quarter: the whole count finds 22% and skips the zeros.
    assert sparse_path_taken(stored(~rows & (uniform < 0.25)), b, trans_a, threads)


@settings(max_examples=60, deadline=None)
@given(m=st.integers(8, 200), k=st.integers(1, 1100), n=st.integers(8, 200),
       trans_a=st.booleans(), trans_b=st.booleans(), density=st.floats(0.0, 1.0),
       b_density=st.floats(0.0, 1.0), either=st.booleans(), float64=st.booleans(),
       threads=st.integers(1, 3), seed=st.integers(0, 2**32 - 1))
def test_sparse_random_shapes(m, k, n, trans_a, trans_b, density, b_density, either, float64,
                              threads, seed):
    dtype = np.float64 if float64 else np.float32
    rng = np.random.default_rng(seed)
    a, b, op_a, op_b = sparse_operands(m, k, n, trans_a, trans_b, density, dtype, rng, b_density)
    c = _core.gemm(a, b, trans_a=trans_a, trans_b=trans_b, sparse="either" if either else "a",
                   threads=threads)
    bound = (k + 2) * eps_of(dtype) * (np.abs(op_a) @ np.abs(op_b))
    assert_within(c, op_a @ op_b, bound, "sparse_a")


def test_sparse_options_are_checked():
    a = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match="exclude each other"):
        _core.gemm(a, a.T.copy(), sparse="a", builtin=True)
    with pytest.raises(ValueError, match="beta other than 0 needs out"):
        _core.gemm(a, a.T.copy(), sparse="a", beta=1.0)
    with pytest.raises(ValueError, match="threads must be at least 1"):
        _core.gemm(a, a.T.copy(), sparse="a", threads=0)
    with pytest.raises(ValueError, match="sparse must be None, 'a' or 'either'"):
        _core.gemm(a, a.T.copy(), sparse="b")


# ------------------------------------------------------------------ as linear layers run it


def relu(v):
    return np.maximum(v, 0)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("input_zeros", [0.0, 0.7], ids=["dense input", "sparse input"])
def test_mlp_forward_and_gradients_match_float64(dtype, input_zeros, threads):
    # Large enough for the sparse path in every product whose A follows a ReLU: the hidden
    # layers' forward, their weight and input gradients (and the first layer's forward when the
    # input itself is mostly zeros).
    rng = np.random.default_rng(8)
    batch, sizes = 48, (300, 256, 200, 10)
    model = fn.Sequential(fn.Linear(sizes[0], sizes[1]), fn.ReLU(),
                          fn.Linear(sizes[1], sizes[2]), fn.ReLU(),
                          fn.Linear(sizes[2], sizes[3]), dtype=dtype, seed=2)
    x = rng.standard_normal((batch, sizes[0]))
    x[rng.random(x.shape) < input_zeros] = 0
    x = x.astype(dtype)
    sd = {name: v.astype(np.float64) for name, v in model.state_dict().items()}
    w = [sd[f"{i}.weight"] for i in (0, 2, 4)]
    bias = [sd[f"{i}.bias"] for i in (0, 2, 4)]
    xs = x.astype(np.float64)
    z1 = xs @ w[0].T + bias[0]
    h1 = relu(z1)
    z2 = h1 @ w[1].T + bias[1]
    h2 = relu(z2)
    y = h2 @ w[2].T + bias[2]
    assert 0.3 < (h1 > 0).mean() < 0.7 and 0.3 < (h2 > 0).mean() < 0.7

    model.zero_grad()
    out = model.forward(x)
    g = rng.standard_normal(out.shape)
    grad_x = model.backward(g.astype(dtype))
    d_z2 = (g @ w[2]) * (z2 > 0)
    d_z1 = (d_z2 @ w[1]) * (z1 > 0)
    expected = {"4.weight": g.T @ h2, "2.weight": d_z2.T @ h1, "0.weight": d_z1.T @ xs,
                "4.bias": g.sum(0), "2.bias": d_z2.sum(0), "0.bias": d_z1.sum(0)}
    tol = 1e-4 if dtype == "float32" else 1e-11

    def close(actual, want, what):
        scale = max(1.0, float(np.abs(want).max()))
        err = float(np.abs(actual.astype(np.float64) - want).max()) / scale
        assert err < tol, f"{what}: relative error {err:.3g}"

    close(out, y, "output")
    close(grad_x, d_z1 @ w[0], "input gradient")
    grads = {p.name: p.grad for p in model.parameters()}
    for name, want in expected.items():
        close(grads[name], want, name)
