"""The conv2d op (csrc/conv2d.c, csrc/im2col.c) against a plain numpy convolution.

Models are built from raw specs through fastnet._core.Model, so that these tests exercise the C op
alone. The reference convolves a zero-padded input one kernel tap at a time: for tap (i, j) the
strided, dilated slice of the padded input under that tap is an (N, C/g, H_out, W_out) array, and
each tap contributes a tensor contraction of it with weight[:, :, i, j]. Its gradients are the
same contractions turned around, which is independent of im2col and of the GEMM.
"""

import json

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import fastnet
from fastnet import _core
from gradcheck import central_difference
from test_kernels import assert_within_bound

# Geometries: (C, H, W, out_channels, kernel, stride, padding, dilation, groups).
GEOMETRIES = {
    "3x3": (3, 8, 8, 4, (3, 3), (1, 1), (0, 0), (1, 1), 1),
    "3x3_pad": (3, 7, 9, 5, (3, 3), (1, 1), (1, 1), (1, 1), 1),
    "stride2": (4, 9, 9, 6, (3, 3), (2, 2), (1, 1), (1, 1), 1),
    "stride_hw": (2, 11, 10, 3, (3, 3), (2, 3), (0, 1), (1, 1), 1),
    "pad_gt_1": (2, 5, 6, 3, (3, 3), (1, 1), (2, 3), (1, 1), 1),
    "dilation": (3, 10, 9, 4, (3, 3), (1, 1), (2, 1), (2, 3), 1),
    "nonsquare": (3, 9, 11, 4, (2, 5), (1, 2), (1, 2), (1, 1), 1),
    "kernel_1x5": (2, 6, 12, 3, (1, 5), (1, 1), (0, 2), (1, 1), 1),
    "odd": (5, 13, 7, 7, (3, 3), (3, 2), (1, 0), (1, 1), 1),
    "pointwise": (6, 5, 7, 4, (1, 1), (1, 1), (0, 0), (1, 1), 1),
    "pointwise_stride2": (6, 9, 7, 4, (1, 1), (2, 2), (0, 0), (1, 1), 1),
    "pointwise_padded": (3, 4, 5, 2, (1, 1), (1, 1), (1, 1), (1, 1), 1),
    "groups2": (4, 8, 7, 6, (3, 3), (1, 1), (1, 1), (1, 1), 2),
    "groups_pointwise": (6, 5, 5, 9, (1, 1), (1, 1), (0, 0), (1, 1), 3),
    "depthwise": (4, 9, 8, 4, (3, 3), (1, 1), (1, 1), (1, 1), 4),
    "depthwise_multiplier": (3, 8, 8, 6, (3, 3), (2, 2), (1, 1), (1, 1), 3),
    "kernel_fills_input": (2, 5, 4, 3, (5, 4), (1, 1), (0, 0), (1, 1), 1),
    "one_output": (2, 4, 4, 3, (3, 3), (5, 5), (0, 0), (1, 1), 1),
    "padding_beyond_kernel": (2, 3, 3, 2, (3, 3), (1, 1), (4, 3), (1, 1), 1),
    # Padded planes past im2col's 32 KB stack buffer take its bounded path: both dtypes here,
    # float64 only in the second.
    "large_plane": (1, 100, 90, 2, (3, 2), (2, 3), (2, 1), (2, 3), 1),
    "plane_64": (2, 64, 64, 3, (3, 3), (1, 1), (1, 1), (1, 1), 1),
    # Output widths that im2col and col2im copy with constant-size rows (8, 16, 24, 32 with
    # stride 1 across; 8, 16 with stride 2), padded (through the stack buffer) or not.
    "width_8": (2, 10, 8, 3, (3, 3), (1, 1), (1, 1), (1, 1), 1),
    "width_16_unpadded": (2, 6, 18, 3, (3, 3), (1, 1), (0, 0), (1, 1), 1),
    "width_24": (1, 5, 24, 2, (3, 3), (1, 1), (1, 1), (1, 1), 1),
    "width_32_stride_h2": (2, 9, 34, 3, (3, 3), (2, 1), (0, 0), (1, 1), 1),
    "width_32_dilated": (2, 8, 36, 2, (3, 3), (1, 1), (1, 0), (2, 2), 1),
    "stride2_width_8": (2, 16, 16, 3, (3, 3), (2, 2), (1, 1), (1, 1), 1),
    "stride2_width_16_unpadded": (3, 7, 33, 2, (3, 3), (2, 2), (0, 0), (1, 1), 1),
    "stride_w2_width_8": (2, 6, 15, 3, (3, 3), (1, 2), (1, 1), (1, 1), 1),
    # The weight gradient from the input's planes shifted by each kernel column instead of its
    # columns (stride 1 across, outputs a multiple of 16 wide, at most 16 output channels a
    # group and 256 output positions or more; also plane_64): groups, a kernel of 10 taps (a
    # last block of one weight column), depthwise, stride 2 down (a run per output row; with
    # one output channel a group, one row of dot products over several runs), dilation, a width
    # copied element by element (48), a row past the stack buffer.
    "windows_grouped": (4, 16, 16, 6, (3, 3), (1, 1), (1, 1), (1, 1), 2),
    "windows_kernel_2x5": (1, 17, 16, 5, (2, 5), (1, 1), (0, 2), (1, 1), 1),
    "windows_depthwise": (3, 16, 16, 3, (3, 3), (1, 1), (1, 1), (1, 1), 3),
    "windows_stride_h2": (2, 33, 34, 3, (3, 3), (2, 1), (0, 0), (1, 1), 1),
    "windows_depthwise_stride_h2": (3, 33, 34, 3, (3, 3), (2, 1), (0, 0), (1, 1), 3),
    "windows_dilated": (2, 20, 36, 2, (3, 3), (1, 1), (1, 0), (2, 2), 1),
    "windows_width_48": (1, 16, 48, 2, (3, 3), (1, 1), (1, 1), (1, 1), 1),
    "windows_long_row": (1, 3, 318, 2, (2, 15), (1, 1), (0, 0), (1, 1), 1),
    # Winograd's F(2x2, 3x3) (3x3, stride 1, one group, at least 16 channels in and out and 16
    # columns; the input gradient too with no more output channels than input ones): padding 1,
    # odd output sizes (a last tile cut by both edges), no padding, padding 2 (the input
    # gradient then pads by 0), different paddings down and across, rows of 25 tiles (in runs)
    # and of 12, more output channels than input ones (the input gradient by im2col), and an
    # output of one row (half a tile row).
    "winograd": (16, 6, 32, 16, (3, 3), (1, 1), (1, 1), (1, 1), 1),
    "winograd_odd": (18, 7, 35, 17, (3, 3), (1, 1), (1, 1), (1, 1), 1),
    "winograd_unpadded": (16, 5, 34, 16, (3, 3), (1, 1), (0, 0), (1, 1), 1),
    "winograd_pad2": (20, 4, 32, 16, (3, 3), (1, 1), (2, 2), (1, 1), 1),
    "winograd_pad_mixed": (16, 6, 33, 16, (3, 3), (1, 1), (0, 1), (1, 1), 1),
    "winograd_wide": (16, 3, 50, 16, (3, 3), (1, 1), (1, 1), (1, 1), 1),
    "winograd_width_24": (16, 5, 24, 16, (3, 3), (1, 1), (1, 1), (1, 1), 1),
    "winograd_widening": (16, 5, 20, 24, (3, 3), (1, 1), (1, 1), (1, 1), 1),
    "winograd_one_row": (16, 1, 16, 16, (3, 3), (1, 1), (1, 1), (1, 1), 1),
    # products tiles by channels (fewer empty columns than channels by tiles): 144 tiles by 32
    # channels, and 40 by 24 (a last block of 8 channels in the output transform)
    "winograd_by_tiles": (32, 24, 24, 32, (3, 3), (1, 1), (1, 1), (1, 1), 1),
    "winograd_by_tiles_tail": (24, 8, 20, 24, (3, 3), (1, 1), (1, 1), (1, 1), 1),
}


def conv_spec(C, H, W, out_channels, kernel, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
              groups=1, bias=True, dtype="float64", seed=0):
    return {
        "format": "fastnet.model", "version": 1, "dtype": dtype, "seed": seed,
        "input_shape": [C, H, W],
        "nodes": [{"name": "0", "op": "conv2d", "in_channels": C, "out_channels": out_channels,
                   "kernel_size": list(kernel), "stride": list(stride),
                   "padding": list(padding), "dilation": list(dilation), "groups": groups,
                   "bias": bias}],
    }


def make_model(geometry, bias=True, dtype="float64", seed=0):
    C, H, W, O, kernel, stride, padding, dilation, groups = geometry
    return _core.Model(json.dumps(conv_spec(C, H, W, O, kernel, stride, padding, dilation, groups,
                                            bias, dtype, seed)))


def tensor(model, arena, name):
    """A view of one parameter's slice of a flat arena, in its shape."""
    for tensor_name, shape, offset, _, _ in model.tensor_info():
        if tensor_name == name:
            return arena[offset:offset + int(np.prod(shape))].reshape(shape)
    raise KeyError(name)


def out_size(size, kernel, stride, padding, dilation):
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def taps(x, weight, stride, padding, dilation, groups):
    """Yields (group, i, j, slice of the padded input under tap (i, j) for the group's channels,
    output channel range) for the reference; x is (N, C, H, W)."""
    N, C, H, W = x.shape
    O, Cg, kh, kw = weight.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    Ho = out_size(H, kh, sh, ph, dh)
    Wo = out_size(W, kw, sw, pw, dw)
    Og = O // groups
    for g in range(groups):
        for i in range(kh):
            for j in range(kw):
                rows = slice(i * dh, i * dh + sh * (Ho - 1) + 1, sh)
                cols = slice(j * dw, j * dw + sw * (Wo - 1) + 1, sw)
                yield g, i, j, (slice(None), slice(g * Cg, (g + 1) * Cg), rows, cols), \
                    slice(g * Og, (g + 1) * Og)


def reference_forward(x, weight, bias, stride, padding, dilation, groups):
    x = x.astype(np.float64)
    weight = weight.astype(np.float64)
    (ph, pw) = padding
    padded = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    y = None
    for g, i, j, window, outs in taps(x, weight, stride, padding, dilation, groups):
        part = np.einsum("nchw,oc->nohw", padded[window], weight[outs, :, i, j])
        if y is None:
            N, _, Ho, Wo = part.shape
            y = np.zeros((N, weight.shape[0], Ho, Wo))
        y[:, outs] += part
    if bias is not None:
        y += bias.astype(np.float64)[None, :, None, None]
    return y


def reference_backward(x, weight, grad_y, stride, padding, dilation, groups):
    """(grad_x, grad_weight, grad_bias) of sum(grad_y * conv(x))."""
    x = x.astype(np.float64)
    weight = weight.astype(np.float64)
    grad_y = grad_y.astype(np.float64)
    (ph, pw) = padding
    padded = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    grad_padded = np.zeros_like(padded)
    grad_weight = np.zeros_like(weight)
    for g, i, j, window, outs in taps(x, weight, stride, padding, dilation, groups):
        grad_weight[outs, :, i, j] += np.einsum("nohw,nchw->oc", grad_y[:, outs], padded[window])
        grad_padded[window] += np.einsum("nohw,oc->nchw", grad_y[:, outs], weight[outs, :, i, j])
    H, W = x.shape[2:]
    grad_x = grad_padded[:, :, ph:ph + H, pw:pw + W]
    return grad_x, grad_weight, grad_y.sum(axis=(0, 2, 3))


def random_params(model, rng):
    """Draws fresh parameters (the init is tested separately) and returns (weight, bias|None)."""
    params = model.param_arena()
    params[:] = rng.uniform(-1, 1, size=params.shape)
    names = [info[0] for info in model.tensor_info()]
    weight = tensor(model, params, "0.weight")
    bias = tensor(model, params, "0.bias") if "0.bias" in names else None
    return weight, bias


def run(model, x, grad_y):
    """forward (kept) then backward from zeroed gradients: (y, grad_x, grad_weight, grad_bias)."""
    y = model.forward(x, keep=True)
    model.zero_grad()
    grad_x = model.backward(grad_y.reshape(len(grad_y), -1), True)
    grads = model.grad_arena()
    names = [info[0] for info in model.tensor_info()]
    grad_bias = tensor(model, grads, "0.bias").copy() if "0.bias" in names else None
    return y, grad_x, tensor(model, grads, "0.weight").copy(), grad_bias


def tolerance(dtype):
    return dict(rtol=1e-4, atol=1e-4) if dtype == "float32" else dict(rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------- forward


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_forward_matches_reference(name, dtype, bias, threads):
    geometry = GEOMETRIES[name]
    C, H, W, O, kernel, stride, padding, dilation, groups = geometry
    model = make_model(geometry, bias, dtype)
    rng = np.random.default_rng(1)
    weight, b = random_params(model, rng)
    x = rng.standard_normal((3, C, H, W)).astype(dtype)
    y = model.forward(x)
    expected = reference_forward(x, weight, b, stride, padding, dilation, groups)
    assert y.shape == (3, expected[0].size)
    np.testing.assert_allclose(y.reshape(expected.shape), expected, **tolerance(dtype))


# Images narrower than 16 columns run by Winograd (forward, input gradient and weight gradient) in
# groups of images with 64 tiles between them (geometry.winograd_images), where the batch fills a
# group: 8 x 8 in groups of 4; 9 x 9 (a last tile cut by both edges) in groups of 3; 32 channels
# over 3 x 25 tiles (products tiles by channels); unpadded, 8 x 10 out of 10 x 12, in groups of 4;
# more output channels than input ones (the input gradient by im2col). A batch of 7 ends in a
# short group, and on 3 threads the backward's chunks cut groups too.
SMALL_IMAGES = {
    "winograd_8x8": (16, 8, 8, 16, (3, 3), (1, 1), (1, 1), (1, 1), 1),
    "winograd_9x9": (18, 9, 9, 17, (3, 3), (1, 1), (1, 1), (1, 1), 1),
    "winograd_9x9_by_tiles": (32, 9, 9, 32, (3, 3), (1, 1), (1, 1), (1, 1), 1),
    "winograd_unpadded_10x12": (16, 10, 12, 16, (3, 3), (1, 1), (0, 0), (1, 1), 1),
    "winograd_widening_8x8": (16, 8, 8, 24, (3, 3), (1, 1), (1, 1), (1, 1), 1),
}


@pytest.mark.parametrize("thread_count", [1, 2, 3])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", sorted(SMALL_IMAGES))
def test_small_images_by_winograd_in_groups_match_reference(name, dtype, thread_count):
    fastnet.set_num_threads(thread_count)
    geometry = SMALL_IMAGES[name]
    C, H, W, O, kernel, stride, padding, dilation, groups = geometry
    model = make_model(geometry, True, dtype)
    rng = np.random.default_rng(12)
    weight, b = random_params(model, rng)
    x = rng.standard_normal((7, C, H, W)).astype(dtype)
    y_shape = (7, O, out_size(H, 3, 1, padding[0], 1), out_size(W, 3, 1, padding[1], 1))
    grad_y = rng.standard_normal(y_shape).astype(dtype)
    y, grad_x, grad_weight, grad_bias = run(model, x, grad_y)
    tol = tolerance(dtype)
    expected = reference_forward(x, weight, b, stride, padding, dilation, groups)
    np.testing.assert_allclose(y.reshape(expected.shape), expected, **tol)
    for got, want, what in zip(
            (grad_x, grad_weight, grad_bias),
            reference_backward(x, weight, grad_y, stride, padding, dilation, groups),
            ("grad_x", "grad_weight", "grad_bias")):
        np.testing.assert_allclose(got.reshape(want.shape), want, err_msg=what, **tol)
    # Each image alone (fewer than a group: by im2col) gives the same outputs, in other bits
    # where both run on one thread: the batch's are Winograd's sums.
    for n in (0, 6):
        alone = model.forward(x[n:n + 1]).reshape(expected[n:n + 1].shape)
        np.testing.assert_allclose(alone, expected[n:n + 1], **tol)
        if thread_count == 1 and dtype == "float32":
            assert not np.array_equal(alone, y[n:n + 1].reshape(alone.shape))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_forward_batch_of_one(dtype, threads):
    # A batch smaller than the thread count runs the GEMM and im2col split over threads instead.
    geometry = (8, 20, 18, 16, (3, 3), (1, 1), (1, 1), (1, 1), 1)
    model = make_model(geometry, True, dtype)
    rng = np.random.default_rng(2)
    weight, b = random_params(model, rng)
    x = rng.standard_normal((1, 8, 20, 18)).astype(dtype)
    expected = reference_forward(x, weight, b, (1, 1), (1, 1), (1, 1), 1)
    np.testing.assert_allclose(model.forward(x).reshape(expected.shape), expected,
                               **tolerance(dtype))


def test_output_shape_and_parameters():
    model = make_model((3, 32, 30, 16, (5, 3), (2, 1), (2, 0), (1, 2), 1))
    info = {name: shape for name, shape, _, _, _ in model.tensor_info()}
    assert info == {"0.weight": (16, 3, 5, 3), "0.bias": (16,)}
    # (32 + 4 - 4 - 1) // 2 + 1 = 16 rows, (30 - 4 - 1) // 1 + 1 = 26 columns
    assert model.output_size == 16 * 16 * 26
    grouped = make_model((6, 8, 8, 4, (3, 3), (1, 1), (0, 0), (1, 1), 2), bias=False)
    assert [(n, s) for n, s, _, _, _ in grouped.tensor_info()] == [("0.weight", (4, 3, 3, 3))]


def test_defaults_of_optional_attributes():
    spec = conv_spec(3, 6, 6, 2, (3, 3))
    for key in ("stride", "padding", "dilation", "groups", "bias"):
        del spec["nodes"][0][key]
    model = _core.Model(json.dumps(spec))
    assert model.output_size == 2 * 4 * 4
    assert [name for name, _, _, _, _ in model.tensor_info()] == ["0.weight", "0.bias"]


def test_init_is_pytorch_default():
    # U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias, fan_in = C/groups * kh * kw.
    model = make_model((8, 10, 10, 64, (3, 3), (1, 1), (1, 1), (1, 1), 2), seed=3)
    bound = 1 / np.sqrt(4 * 9)
    params = model.param_arena()
    for name in ("0.weight", "0.bias"):
        values = tensor(model, params, name)
        assert np.all(np.abs(values) <= bound), name
        assert np.abs(values).max() > 0.8 * bound, name
    weight = tensor(model, params, "0.weight")
    assert abs(weight.mean()) < 0.05 * bound
    assert abs(weight.std() - bound / np.sqrt(3)) < 0.05 * bound
    # Deterministic for a seed, different for another.
    again = make_model((8, 10, 10, 64, (3, 3), (1, 1), (1, 1), (1, 1), 2), seed=3)
    np.testing.assert_array_equal(again.param_arena(), params)
    other = make_model((8, 10, 10, 64, (3, 3), (1, 1), (1, 1), (1, 1), 2), seed=4)
    assert not np.array_equal(other.param_arena(), params)


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_gradients_match_reference(name, dtype, bias, threads):
    geometry = GEOMETRIES[name]
    C, H, W, O, kernel, stride, padding, dilation, groups = geometry
    model = make_model(geometry, bias, dtype)
    rng = np.random.default_rng(4)
    weight, _ = random_params(model, rng)
    x = rng.standard_normal((3, C, H, W)).astype(dtype)
    y_shape = (3, O, out_size(H, kernel[0], stride[0], padding[0], dilation[0]),
               out_size(W, kernel[1], stride[1], padding[1], dilation[1]))
    grad_y = rng.standard_normal(y_shape).astype(dtype)
    _, grad_x, grad_weight, grad_bias = run(model, x, grad_y)
    expected_x, expected_weight, expected_bias = reference_backward(
        x, weight, grad_y, stride, padding, dilation, groups)
    tol = tolerance(dtype)
    np.testing.assert_allclose(grad_x.reshape(x.shape), expected_x, **tol)
    np.testing.assert_allclose(grad_weight, expected_weight, **tol)
    if bias:
        np.testing.assert_allclose(grad_bias, expected_bias, **tol)
    else:
        assert grad_bias is None


@st.composite
def geometries(draw):
    """(C, H, W, out_channels, kernel, stride, padding, dilation, groups): half of them 3x3 of
    stride 1 in one group with up to 40 and 70 channels, which Winograd takes from 16 channels
    and 16 columns on, the others of any kernel, stride, padding, dilation and groups."""
    if draw(st.booleans()):
        C = draw(st.one_of(st.integers(1, 15), st.integers(16, 40)))
        O = draw(st.one_of(st.integers(1, 15), st.integers(16, 70)))
        kernel, stride, dilation, groups = (3, 3), (1, 1), (1, 1), 1
        W = draw(st.integers(10, 40))
    else:
        groups = draw(st.sampled_from([1, 1, 2, 3]))
        C, O = groups * draw(st.integers(1, 6)), groups * draw(st.integers(1, 8))
        kernel = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
        stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
        dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
        W = draw(st.integers(1, 40))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    H = draw(st.integers(1, 30))
    return C, H, W, O, kernel, stride, padding, dilation, groups


@settings(max_examples=300)
@given(geometries(), st.sampled_from(["float32", "float64"]), st.integers(1, 5),
       st.sampled_from([1, 2, 3]), st.booleans())
def test_random_geometries_match_reference(geometry, dtype, batch, thread_count, bias):
    # Geometries drawn at random reach each way the op computes by its own choice (im2col or the
    # shifted windows, Winograd forward and input gradient, per image or split within one), on
    # 1 to 3 threads, training and then each image alone in eval mode (bands of rows or channels
    # where an image is fewer than the threads). Each result must be within the error bound of
    # its float64 reference: the length of its sums times the dtype's epsilon times the same
    # result computed on absolute values.
    C, H, W, O, kernel, stride, padding, dilation, groups = geometry
    Ho = out_size(H, kernel[0], stride[0], padding[0], dilation[0])
    Wo = out_size(W, kernel[1], stride[1], padding[1], dilation[1])
    assume(Ho >= 1 and Wo >= 1)
    fastnet.set_num_threads(thread_count)
    model = make_model(geometry, bias, dtype)
    rng = np.random.default_rng(C * 31 + H * 7 + W + O * 101 + batch)
    weight, b = random_params(model, rng)
    x = rng.standard_normal((batch, C, H, W)).astype(dtype)
    grad_y = rng.standard_normal((batch, O, Ho, Wo)).astype(dtype)
    eps = float(np.finfo(dtype).eps)
    args = (stride, padding, dilation, groups)
    y, grad_x, grad_weight, grad_bias = run(model, x, grad_y)

    expected = reference_forward(x, weight, b, *args)
    magnitude = reference_forward(np.abs(x), np.abs(weight), None if b is None else np.abs(b),
                                  *args)
    forward_bound = (C // groups * kernel[0] * kernel[1] + 2) * eps * magnitude
    assert_within_bound(y.reshape(expected.shape), expected, forward_bound, "forward")
    expected_x, expected_weight, expected_bias = reference_backward(x, weight, grad_y, *args)
    magnitude_x, magnitude_weight, magnitude_bias = reference_backward(
        np.abs(x), np.abs(weight), np.abs(grad_y), *args)
    assert_within_bound(grad_x.reshape(x.shape), expected_x,
                        (O * kernel[0] * kernel[1] + 2) * eps * magnitude_x, "input gradient")
    sums = batch * Ho * Wo + 2
    assert_within_bound(grad_weight, expected_weight, sums * eps * magnitude_weight,
                        "weight gradient")
    if bias:
        assert_within_bound(grad_bias, expected_bias, sums * eps * magnitude_bias,
                            "bias gradient")
    model.training = False
    for i in range(min(batch, 2)):
        alone = model.forward(x[i:i + 1]).reshape(expected[i:i + 1].shape)
        assert_within_bound(alone, expected[i:i + 1], forward_bound[i:i + 1], f"image {i} alone")


@pytest.mark.parametrize("name", ["3x3_pad", "stride_hw", "dilation", "groups2", "depthwise",
                                  "pointwise", "pointwise_stride2"])
def test_gradients_match_finite_differences(name, threads):
    # float64: the loss sum(grad_y * y) is linear in each argument, so the central difference is
    # exact up to rounding, far below the tolerance.
    geometry = GEOMETRIES[name]
    C, H, W = geometry[:3]
    model = make_model(geometry)
    rng = np.random.default_rng(5)
    random_params(model, rng)
    x = rng.standard_normal((2, C, H, W))
    grad_y = rng.standard_normal((2, model.output_size))

    def loss():
        return float(np.sum(model.forward(x) * grad_y))

    model.forward(x, keep=True)
    model.zero_grad()
    grad_x = model.backward(grad_y, True)
    grads = model.grad_arena()
    params = model.param_arena()
    np.testing.assert_allclose(grad_x.reshape(x.shape), central_difference(loss, x),
                               rtol=1e-6, atol=1e-7)
    for name in ("0.weight", "0.bias"):
        numeric = central_difference(loss, tensor(model, params, name))
        np.testing.assert_allclose(tensor(model, grads, name), numeric, rtol=1e-6, atol=1e-7,
                                   err_msg=name)


@pytest.mark.parametrize("name", ["3x3_pad", "pointwise", "groups2", "winograd_by_tiles",
                                  "winograd_8x8"])
def test_parameter_gradients_accumulate(name, threads):
    # Two backward calls without zero_grad add up; the input gradient is returned fresh each time.
    # By Winograd the weight gradient's sums are taken back to the weights and added there (a
    # batch of 9: 8 x 8 images in groups of 4, the last one short).
    geometry = {**GEOMETRIES, **SMALL_IMAGES}[name]
    C, H, W = geometry[:3]
    model = make_model(geometry)
    rng = np.random.default_rng(6)
    random_params(model, rng)
    batch = 9 if name in SMALL_IMAGES else 4
    x = rng.standard_normal((batch, C, H, W))
    grad_y = rng.standard_normal((batch, model.output_size))
    model.forward(x, keep=True)
    model.zero_grad()
    first_x = model.backward(grad_y, True)
    first = model.grad_arena().copy()
    second_x = model.backward(grad_y, True)
    np.testing.assert_allclose(model.grad_arena(), 2 * first, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(second_x, first_x)


def test_input_gradient_accumulates_over_consumers(threads):
    # The model input feeds two convolutions (a padded 3x3 and a 1x1 shortcut, as in a residual
    # block); the second one visited in backward must add to the input gradient, not overwrite it.
    spec = {
        "format": "fastnet.model", "version": 1, "dtype": "float64", "seed": 0,
        "input_shape": [4, 9, 9],
        "nodes": [
            {"name": "a", "op": "conv2d", "inputs": ["input"], "in_channels": 4,
             "out_channels": 6, "kernel_size": [3, 3], "stride": [2, 2], "padding": [1, 1]},
            {"name": "b", "op": "conv2d", "inputs": ["input"], "in_channels": 4,
             "out_channels": 6, "kernel_size": [1, 1], "stride": [2, 2]},
            {"name": "c", "op": "conv2d", "inputs": ["input"], "in_channels": 4,
             "out_channels": 6, "kernel_size": [3, 3], "stride": [2, 2], "padding": [1, 1],
             "groups": 2, "bias": False},
            {"name": "sum", "op": "add", "inputs": ["a", "b", "c"]},
        ],
    }
    model = _core.Model(json.dumps(spec))
    rng = np.random.default_rng(7)
    params = model.param_arena()
    params[:] = rng.uniform(-1, 1, size=params.shape)
    x = rng.standard_normal((3, 4, 9, 9))
    grad_y = rng.standard_normal((3, 6, 5, 5))
    model.forward(x, keep=True)
    model.zero_grad()
    grad_x = model.backward(grad_y.reshape(3, -1), True).reshape(x.shape)
    expected = np.zeros_like(x)
    for name, stride, padding, groups in (("a", (2, 2), (1, 1), 1), ("b", (2, 2), (0, 0), 1),
                                          ("c", (2, 2), (1, 1), 2)):
        weight = tensor(model, params, name + ".weight")
        expected += reference_backward(x, weight, grad_y, stride, padding, (1, 1), groups)[0]
    np.testing.assert_allclose(grad_x, expected, rtol=1e-10, atol=1e-10)


# Batch-1 forwards large enough (>= 2^20 multiply-adds) to be cut into bands, one per thread: of
# output rows (>= 128 output positions a band), each from the columns of its own rows, or for
# smaller planes of output channels (>= 16 a band), each from all the columns.
BANDED = {
    "channels_3x3": (64, 8, 8, 64, (3, 3), (1, 1), (1, 1), (1, 1), 1),
    "channels_stride2": (32, 16, 16, 64, (3, 3), (2, 2), (1, 1), (1, 1), 1),
    "channels_uneven": (48, 8, 8, 40, (3, 3), (1, 1), (1, 1), (1, 1), 1),
    "channels_pointwise": (64, 8, 8, 256, (1, 1), (1, 1), (0, 0), (1, 1), 1),
    "channels_grouped_not_cut": (64, 8, 8, 64, (3, 3), (1, 1), (1, 1), (1, 1), 2),
    "3x3_pad": (16, 32, 32, 16, (3, 3), (1, 1), (1, 1), (1, 1), 1),
    "odd_rows": (16, 33, 31, 16, (3, 3), (1, 1), (1, 1), (1, 1), 1),
    "stride2_pad": (32, 35, 33, 32, (3, 3), (2, 2), (1, 1), (1, 1), 1),
    "dilation2": (16, 32, 30, 16, (3, 3), (1, 1), (2, 2), (2, 2), 1),
    "grouped": (32, 32, 32, 32, (3, 3), (1, 1), (1, 1), (1, 1), 2),
    "pointwise": (64, 32, 32, 64, (1, 1), (1, 1), (0, 0), (1, 1), 1),
    "5x5_no_padding": (8, 36, 36, 32, (5, 5), (1, 1), (0, 0), (1, 1), 1),
    "plane_beyond_the_stack_buffer": (4, 100, 100, 8, (3, 3), (1, 1), (1, 1), (1, 1), 1),
    "asymmetric": (8, 40, 24, 32, (3, 5), (1, 2), (2, 1), (1, 1), 1),
    # The CNN's second convolution: with two threads, each band's columns (12 rows, 331 KB in
    # float32) are unrolled and multiplied in pieces of 4 rows (3 whole slivers of 32 columns).
    "pieces_of_bands": (32, 26, 26, 64, (3, 3), (1, 1), (0, 0), (1, 1), 1),
}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", list(BANDED))
def test_forward_of_one_image_in_bands(name, dtype, threads):
    geometry = BANDED[name]
    C, H, W, O, kernel, stride, padding, dilation, groups = geometry
    model = make_model(geometry, True, dtype)
    rng = np.random.default_rng(3)
    weight, b = random_params(model, rng)
    x = rng.standard_normal((1, C, H, W)).astype(dtype)
    expected = reference_forward(x, weight, b, stride, padding, dilation, groups)
    np.testing.assert_allclose(model.forward(x).reshape(expected.shape), expected,
                               **tolerance(dtype))
    # With a fused ReLU, which each band applies to its own rows.
    spec = conv_spec(C, H, W, O, kernel, stride, padding, dilation, groups, True, dtype)
    spec["nodes"].append({"name": "r", "op": "relu", "inputs": ["0"]})
    fused = _core.Model(json.dumps(spec))
    fused.param_arena()[:] = model.param_arena()
    fused.training = False
    np.testing.assert_allclose(fused.forward(x).reshape(expected.shape), np.maximum(expected, 0),
                               **tolerance(dtype))
    # And without a bias: the ReLU alone.
    spec["nodes"][0]["bias"] = False
    unbiased = _core.Model(json.dumps(spec))
    unbiased.param_arena()[:] = tensor(model, model.param_arena(), "0.weight").ravel()
    unbiased.training = False
    expected = reference_forward(x, weight, None, stride, padding, dilation, groups)
    np.testing.assert_allclose(unbiased.forward(x).reshape(expected.shape),
                               np.maximum(expected, 0), **tolerance(dtype))


# Batch-1 inference through consecutive convolutions and max pools runs them as one band chain:
# each thread computes its band of output rows of every node, with a barrier between nodes (a band
# reads the rows around it that another thread wrote). Each convolution here has at least 128
# output positions per band for three threads; the pools' rows are cut unevenly.
CHAINS = {
    # conv-ReLU-conv-ReLU-max pool, the CNN's shape at a smaller scale
    "cnn": ((1, 28, 28), [
        {"op": "conv2d", "in_channels": 1, "out_channels": 8, "kernel_size": [3, 3]},
        {"op": "relu"},
        {"op": "conv2d", "in_channels": 8, "out_channels": 16, "kernel_size": [3, 3]},
        {"op": "relu"},
        {"op": "max_pool2d", "kernel_size": 2}]),
    # odd sizes, padding, no bias, an overlapping pool with padding, and a convolution after it
    # whose plane is too small to be cut (the chain ends before it)
    "uneven": ((3, 23, 29), [
        {"op": "conv2d", "in_channels": 3, "out_channels": 13, "kernel_size": [3, 3],
         "padding": [1, 1]},
        {"op": "relu"},
        {"op": "conv2d", "in_channels": 13, "out_channels": 8, "kernel_size": [3, 3],
         "bias": False},
        {"op": "max_pool2d", "kernel_size": 3, "stride": 2, "padding": 1},
        {"op": "conv2d", "in_channels": 8, "out_channels": 4, "kernel_size": [3, 3],
         "padding": [1, 1]}]),
    # a pool between two convolutions, the second one padded and dilated
    "pool_between": ((2, 40, 42), [
        {"op": "conv2d", "in_channels": 2, "out_channels": 6, "kernel_size": [3, 3],
         "padding": [1, 1]},
        {"op": "max_pool2d", "kernel_size": 2},
        {"op": "conv2d", "in_channels": 6, "out_channels": 12, "kernel_size": [3, 3],
         "padding": [2, 2], "dilation": [2, 2]},
        {"op": "relu"}]),
}


def chain_model(name, dtype, table=CHAINS):
    shape, layers = table[name]
    nodes = [dict(layer, name=str(i)) for i, layer in enumerate(layers)]
    spec = {"format": "fastnet.model", "version": 1, "dtype": dtype, "seed": 0,
            "input_shape": list(shape), "nodes": nodes}
    return _core.Model(json.dumps(spec)), shape, layers


def reference_max_pool(x, kernel, stride, padding):
    """kernel and stride: an int or an (h, w) pair."""
    (kh, kw), (sh, sw) = (np.broadcast_to(kernel, 2), np.broadcast_to(stride, 2))
    padded = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)),
                    constant_values=-np.inf)
    H = (x.shape[2] + 2 * padding - kh) // sh + 1
    W = (x.shape[3] + 2 * padding - kw) // sw + 1
    windows = [padded[:, :, i:i + sh * (H - 1) + 1:sh, j:j + sw * (W - 1) + 1:sw]
               for i in range(kh) for j in range(kw)]
    return np.max(windows, axis=0)


def reference_chain(model, x, layers):
    params = model.param_arena()
    y = x.astype(np.float64)
    for i, layer in enumerate(layers):
        if layer["op"] == "conv2d":
            bias = tensor(model, params, f"{i}.bias") if layer.get("bias", True) else None
            y = reference_forward(y, tensor(model, params, f"{i}.weight"), bias, (1, 1),
                                  layer.get("padding", [0, 0]), layer.get("dilation", [1, 1]),
                                  layer.get("groups", 1))
        elif layer["op"] == "relu":
            y = np.maximum(y, 0)
        else:
            y = reference_max_pool(y, layer["kernel_size"], layer.get("stride", layer["kernel_size"]),
                                   layer.get("padding", 0))
    return y


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("name", list(CHAINS))
def test_inference_of_one_image_as_a_band_chain(name, threads, dtype):
    fastnet.set_num_threads(threads)
    model, shape, layers = chain_model(name, dtype)
    rng = np.random.default_rng(21)
    model.param_arena()[:] = rng.uniform(-0.5, 0.5, size=model.param_arena().shape)
    model.training = False
    images = rng.standard_normal((3, *shape)).astype(dtype)
    expected = reference_chain(model, images, layers).reshape(3, -1)
    # Each image alone (a chain with 2 or 3 threads), then all three (no chain): both the
    # reference's, whatever the thread count; repeated calls give the same bits.
    for i in range(3):
        first = model.forward(images[i:i + 1])
        np.testing.assert_allclose(first[0], expected[i], **tolerance(dtype))
        np.testing.assert_array_equal(model.forward(images[i:i + 1]), first)
    np.testing.assert_allclose(model.forward(images), expected, **tolerance(dtype))


# In a band chain, a convolution (and the ReLU fused into it) whose output only a max pool with
# windows as tall as their stride reads hands that output to the pool a piece of rows at a time,
# and never stores it: node_output then refuses it, unless keep_outputs stores every output.
PIECES = {
    # the CNN's conv-ReLU-max pool at a smaller scale; pieces of 4 rows
    "relu_pool2": ((16, 26, 26), [
        {"op": "conv2d", "in_channels": 16, "out_channels": 32, "kernel_size": [3, 3]},
        {"op": "relu"},
        {"op": "max_pool2d", "kernel_size": 2}]),
    # no ReLU, 3 x 3 windows of stride 3, and an odd height whose last row no window reads
    "pool3_odd": ((8, 31, 20), [
        {"op": "conv2d", "in_channels": 8, "out_channels": 24, "kernel_size": [3, 3],
         "padding": [1, 1]},
        {"op": "max_pool2d", "kernel_size": 3}]),
    # two groups, each taking its half of the channels of every piece
    "grouped": ((8, 30, 28), [
        {"op": "conv2d", "in_channels": 8, "out_channels": 16, "kernel_size": [3, 3],
         "groups": 2},
        {"op": "relu"},
        {"op": "max_pool2d", "kernel_size": 2}]),
    # windows wider than their stride along the rows only: still whole rows a piece
    "wide_windows": ((8, 24, 40), [
        {"op": "conv2d", "in_channels": 8, "out_channels": 16, "kernel_size": [3, 3]},
        {"op": "relu"},
        {"op": "max_pool2d", "kernel_size": [2, 3], "stride": [2, 1]}]),
}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("name", list(PIECES))
def test_a_band_chain_pools_a_convolution_piece_by_piece(name, threads, dtype):
    fastnet.set_num_threads(threads)
    model, shape, layers = chain_model(name, dtype, PIECES)
    rng = np.random.default_rng(5)
    model.param_arena()[:] = rng.uniform(-0.5, 0.5, size=model.param_arena().shape)
    model.training = False
    image = rng.standard_normal((1, *shape)).astype(dtype)
    pooled = reference_chain(model, image, layers).reshape(1, -1)
    pool_input = reference_chain(model, image, layers[:-1]).reshape(1, -1)
    out = model.forward(image)
    np.testing.assert_allclose(out, pooled, **tolerance(dtype))
    # The pool's input (the ReLU's, whose memory is the convolution's) was never stored.
    with pytest.raises(RuntimeError, match=r"was not stored.*keep_outputs"):
        model.node_output(len(layers) - 2)
    # Stored when asked (the ReLU then runs on its own, and the convolution whole: the same
    # values, to rounding).
    model.keep_outputs = True
    np.testing.assert_allclose(model.forward(image), out, **tolerance(dtype))
    np.testing.assert_allclose(model.node_output(len(layers) - 2).reshape(1, -1), pool_input,
                               **tolerance(dtype))
    model.keep_outputs = False
    np.testing.assert_array_equal(model.forward(image), out)
    # Two samples on three threads: a chain still, each sample's pieces in turn.
    if threads == 3:
        pair = np.concatenate([image, image[:, :, ::-1]])
        np.testing.assert_allclose(model.forward(pair),
                                   reference_chain(model, pair, layers).reshape(2, -1),
                                   **tolerance(dtype))
    # A batch of as many samples as threads runs no chain: every output stored.
    batch = np.concatenate([image] * threads)
    np.testing.assert_allclose(model.forward(batch), np.concatenate([out] * threads),
                               **tolerance(dtype))
    np.testing.assert_allclose(model.node_output(len(layers) - 2)[:1].reshape(1, -1), pool_input,
                               **tolerance(dtype))


WINOGRAD_BANDS = {
    "relu_pool2": PIECES["relu_pool2"],
    # padding, 24 output channels (a block of 16 and one of 8 in the output transform), an odd
    # height whose last row no window reads, and bands starting at odd rows with 3 threads
    "padded_odd": ((16, 31, 20), [
        {"op": "conv2d", "in_channels": 16, "out_channels": 24, "kernel_size": [3, 3],
         "padding": [1, 1]},
        {"op": "relu"},
        {"op": "max_pool2d", "kernel_size": 3}]),
}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("name", list(WINOGRAD_BANDS))
def test_batch_one_winograd_bands_see_every_change_of_the_weights(name, threads, dtype):
    # A batch-1 inference runs a convolution that Winograd takes (16 channels or more in and out)
    # as bands of rows by Winograd, from transformed weights kept across calls with a copy of the
    # weights they came from: any write to the weights, however small and through any view,
    # must be seen at the next call, and writing the old values back gives the old bits.
    fastnet.set_num_threads(threads)
    model, shape, layers = chain_model(name, dtype, WINOGRAD_BANDS)
    rng = np.random.default_rng(8)
    arena = model.param_arena()
    arena[:] = rng.uniform(-0.5, 0.5, size=arena.shape)
    model.training = False
    image = rng.standard_normal((1, *shape)).astype(dtype)
    first = model.forward(image)
    np.testing.assert_allclose(first, reference_chain(model, image, layers).reshape(1, -1),
                               **tolerance(dtype))
    weight = tensor(model, arena, "0.weight")
    saved = weight.copy()
    for change in (lambda w: w.__imul__(0.5), lambda w: w.__setitem__((-1, -1, -1, -1), 3.0),
                   lambda w: w.__setitem__((0, 0, 0, 0), np.nextafter(w[0, 0, 0, 0], 1))):
        change(weight)
        out = model.forward(image)
        np.testing.assert_allclose(out, reference_chain(model, image, layers).reshape(1, -1),
                                   **tolerance(dtype))
        # The same bits as a model that never ran, given the same parameters (one ulp too).
        fresh, _, _ = chain_model(name, dtype, WINOGRAD_BANDS)
        fresh.param_arena()[:] = arena
        fresh.training = False
        np.testing.assert_array_equal(fresh.forward(image), out)
    weight[...] = saved
    np.testing.assert_array_equal(model.forward(image), first)
    # A larger batch (whole images, the weights transformed for the pass) agrees.
    batch = np.concatenate([image] * threads)
    np.testing.assert_allclose(model.forward(batch), np.concatenate([first] * threads),
                               **tolerance(dtype))


@pytest.mark.parametrize("threads", [1, 2])
def test_a_convolution_read_by_two_pools_stores_its_output(threads):
    # The ReLU's output has two readers: neither pool may take it piece by piece.
    fastnet.set_num_threads(threads)
    nodes = [
        {"name": "c", "op": "conv2d", "in_channels": 8, "out_channels": 16, "kernel_size": [3, 3]},
        {"name": "r", "op": "relu", "inputs": ["c"]},
        {"name": "p", "op": "max_pool2d", "kernel_size": 2, "inputs": ["r"]},
        {"name": "q", "op": "max_pool2d", "kernel_size": 2, "inputs": ["r"]},
        {"name": "s", "op": "add", "inputs": ["p", "q"]},
    ]
    spec = {"format": "fastnet.model", "version": 1, "dtype": "float64", "seed": 0,
            "input_shape": [8, 26, 26], "nodes": nodes}
    model = _core.Model(json.dumps(spec))
    rng = np.random.default_rng(6)
    model.param_arena()[:] = rng.uniform(-0.5, 0.5, size=model.param_arena().shape)
    model.training = False
    image = rng.standard_normal((1, 8, 26, 26))
    conv = np.maximum(reference_forward(image, tensor(model, model.param_arena(), "c.weight"),
                                        tensor(model, model.param_arena(), "c.bias"), (1, 1),
                                        (0, 0), (1, 1), 1), 0)
    pooled = conv.reshape(1, 16, 12, 2, 12, 2).max(axis=(3, 5))
    np.testing.assert_allclose(model.forward(image).reshape(pooled.shape), 2 * pooled,
                               rtol=1e-12, atol=1e-12)
    model.node_output(1)


# ---------------------------------------------------------------- threads


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("batch", [1, 3, 16])
@pytest.mark.parametrize("name", ["3x3_pad_large", "stride2_large", "pointwise_large",
                                  "depthwise_large"])
def test_one_and_two_threads_agree(name, batch, dtype):
    # Large enough that two threads are used: over images for batch >= 2, inside the GEMM for 1.
    geometry = {
        "3x3_pad_large": (8, 16, 16, 16, (3, 3), (1, 1), (1, 1), (1, 1), 1),
        "stride2_large": (16, 17, 15, 32, (3, 3), (2, 2), (1, 1), (1, 1), 1),
        "pointwise_large": (16, 16, 16, 32, (1, 1), (1, 1), (0, 0), (1, 1), 1),
        "depthwise_large": (16, 16, 16, 16, (3, 3), (1, 1), (1, 1), (1, 1), 16),
    }[name]
    rng = np.random.default_rng(8)
    C, H, W = geometry[:3]
    x = rng.standard_normal((batch, C, H, W)).astype(dtype)
    results = []
    for n in (1, 2):
        fastnet.set_num_threads(n)
        model = make_model(geometry, True, dtype)
        random_params(model, np.random.default_rng(9))
        grad_y = np.random.default_rng(10).standard_normal((batch, model.output_size))
        y, grad_x, grad_weight, grad_bias = run(model, x, grad_y.astype(dtype))
        # A second, accumulating backward: partials must add to what is there.
        model.backward(grad_y.astype(dtype), True)
        results.append((y, grad_x, grad_weight, grad_bias, model.grad_arena().copy()))
    tol = tolerance(dtype)
    for one, two, what in zip(*results, ("y", "grad_x", "grad_weight", "grad_bias", "grads")):
        np.testing.assert_allclose(two, one, err_msg=what, **tol)
    # And both against the reference.
    C, H, W, O, kernel, stride, padding, dilation, groups = geometry
    weight, _ = random_params(make_model(geometry, True, dtype), np.random.default_rng(9))
    y_shape = (batch, O, out_size(H, kernel[0], stride[0], padding[0], dilation[0]),
               out_size(W, kernel[1], stride[1], padding[1], dilation[1]))
    expected = reference_backward(x, weight, grad_y.reshape(y_shape).astype(dtype), stride,
                                  padding, dilation, groups)
    for got, want, what in zip(results[1][1:4], expected, ("grad_x", "grad_weight", "grad_bias")):
        np.testing.assert_allclose(got.reshape(want.shape), want, err_msg=what, **tol)


def test_two_threads_are_deterministic():
    fastnet.set_num_threads(2)
    geometry = (8, 16, 16, 16, (3, 3), (1, 1), (1, 1), (1, 1), 1)
    rng = np.random.default_rng(11)
    x = rng.standard_normal((7, 8, 16, 16)).astype(np.float32)
    grad_y = rng.standard_normal((7, 16 * 16 * 16)).astype(np.float32)
    outputs = []
    for _ in range(3):
        model = make_model(geometry, True, "float32")
        outputs.append(run(model, x, grad_y))
    for other in outputs[1:]:
        for a, b in zip(outputs[0], other):
            np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- errors


def error_of(spec):
    with pytest.raises(ValueError) as info:
        _core.Model(json.dumps(spec))
    return str(info.value)


def test_wrong_channel_count_is_a_clear_error():
    spec = conv_spec(3, 8, 8, 4, (3, 3))
    spec["nodes"][0]["in_channels"] = 1
    message = error_of(spec)
    assert "'0'" in message and "(1, H, W)" in message and "(3, 8, 8)" in message, message


def test_input_without_channels_is_an_error():
    spec = conv_spec(3, 8, 8, 4, (3, 3))
    spec["input_shape"] = [64]
    spec["nodes"][0]["in_channels"] = 64
    message = error_of(spec)
    assert "(64, H, W)" in message and "(64)" in message, message


@pytest.mark.parametrize("kernel,padding,dilation", [((5, 3), (0, 0), (1, 1)),
                                                    ((3, 3), (0, 0), (1, 3)),
                                                    ((7, 1), (1, 0), (1, 1))])
def test_too_small_input_is_a_clear_error(kernel, padding, dilation):
    message = error_of(conv_spec(2, 4, 6, 3, kernel, padding=padding, dilation=dilation))
    assert "'0'" in message and "too small" in message and "(2, 4, 6)" in message, message


@pytest.mark.parametrize("change,words", [
    ({"groups": 2}, "groups"),
    ({"groups": 0}, "groups"),
    ({"out_channels": 0}, "channel"),
    ({"kernel_size": [3]}, "kernel_size"),
    ({"kernel_size": 3}, "kernel_size"),
    ({"kernel_size": [0, 3]}, "kernel_size"),
    ({"stride": [1, 0]}, "stride"),
    ({"padding": [-1, 0]}, "padding"),
    ({"dilation": [0, 1]}, "dilation"),
    ({"stride": [1.5, 1]}, "stride"),
    ({"bias": 1}, "bias"),
])
def test_invalid_attributes_are_clear_errors(change, words):
    spec = conv_spec(3, 8, 8, 4, (3, 3))
    spec["nodes"][0].update(change)
    message = error_of(spec)
    assert words in message and "0" in message, message


def test_missing_kernel_size_is_an_error():
    spec = conv_spec(3, 8, 8, 4, (3, 3))
    del spec["nodes"][0]["kernel_size"]
    assert "kernel_size" in error_of(spec)
