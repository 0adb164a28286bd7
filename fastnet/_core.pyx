# The only boundary between Python and the C core: checks arrays (dtype, C order, sizes), releases
# the GIL around every C call, and turns a C status into a Python exception carrying C's message.
from cpython.pycapsule cimport PyCapsule_GetName, PyCapsule_GetPointer
from libc.stdint cimport int64_t, uint64_t, uintptr_t
from libc.stdlib cimport free, malloc

import numpy as np

cimport numpy as cnp

from fastnet._core cimport *

cnp.import_array()

# The one private kernel reached from here, and its limit, for its tests and benchmarks: the public
# API has no product that skips A's zeros (a model's linear layers choose it themselves).
cdef extern from "kernels.h" nogil:
    void fn_gemm_sparse_f32(bint trans_a, bint trans_b, int64_t m, int64_t n, int64_t k,
                            const float *a, int64_t lda, const float *b, int64_t ldb,
                            float beta, float *c, int64_t ldc, int threads, bint reversed,
                            const float *col_bias, bint relu, bint sparse_b)
    void fn_gemm_sparse_f64(bint trans_a, bint trans_b, int64_t m, int64_t n, int64_t k,
                            const double *a, int64_t lda, const double *b, int64_t ldb,
                            double beta, double *c, int64_t ldc, int threads, bint reversed,
                            const double *col_bias, bint relu, bint sparse_b)
    double fn_sparse_max_density()

FLOAT32 = 0
FLOAT64 = 1
OPT_SGD = 0
OPT_ADAM = 1
OPT_ADAMW = 2
OPT_ADAGRAD = 3
OPT_RMSPROP = 4


cdef int raise_status(fn_status status) except -1:
    message = fn_last_error().decode("utf-8", "replace")
    if status == FN_ENOMEM:
        raise MemoryError(message)
    if status == FN_EIO:
        raise OSError(message)
    if status == FN_ENUMERIC:
        raise FloatingPointError(message)
    if status == FN_ESTATE:
        raise RuntimeError(message)
    raise ValueError(message)


cdef inline int check(fn_status status) except -1:
    if status != FN_OK:
        raise_status(status)
    return 0


cdef inline object numpy_dtype(fn_dtype dtype):
    return np.float64 if dtype == FN_FLOAT64 else np.float32


cdef cnp.ndarray as_floats(object x, fn_dtype dtype, str what):
    """x as a C-contiguous array of the model's dtype; floats of another width are converted,
    anything else is refused (integer images must be scaled by the caller)."""
    cdef cnp.ndarray array
    if not isinstance(x, cnp.ndarray):
        x = np.asarray(x)
    array = <cnp.ndarray>x
    cdef int want = cnp.NPY_FLOAT64 if dtype == FN_FLOAT64 else cnp.NPY_FLOAT32
    if cnp.PyArray_TYPE(array) == want and cnp.PyArray_IS_C_CONTIGUOUS(array):
        return array
    if array.dtype.kind != "f":
        raise TypeError(
            f"{what} must be a floating-point array, got dtype {array.dtype}"
            + (" (scale integer data to floats first, e.g. x.astype(np.float32) / 255)"
               if array.dtype.kind in "iub" else "")
        )
    return np.ascontiguousarray(array, dtype=numpy_dtype(dtype))


cdef fn_label_type label_type_of(cnp.ndarray labels) except *:
    # From the array's type, without Python attribute lookups: it runs at every step.
    cdef bint signed = cnp.PyArray_ISSIGNED(labels)
    cdef cnp.npy_intp size = cnp.PyArray_ITEMSIZE(labels)
    if signed or cnp.PyArray_ISUNSIGNED(labels):
        if size == 1:
            return FN_LABEL_I8 if signed else FN_LABEL_U8
        if size == 2:
            return FN_LABEL_I16 if signed else FN_LABEL_U16
        if size == 4:
            return FN_LABEL_I32 if signed else FN_LABEL_U32
        if size == 8:
            return FN_LABEL_I64 if signed else FN_LABEL_U64
    raise TypeError(f"labels must be an integer array, got dtype {labels.dtype}")


cdef cnp.ndarray as_labels(object y, int64_t n):
    cdef cnp.ndarray labels = np.asarray(y)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"labels must have shape ({n},) to match the batch, got {np.shape(labels)}")
    label_type_of(labels)  # raises TypeError for non-integers
    if not cnp.PyArray_IS_C_CONTIGUOUS(labels) or not labels.dtype.isnative:
        labels = np.ascontiguousarray(labels, dtype=labels.dtype.newbyteorder("="))
    return labels


cdef object array_view(object owner, void *data, int64_t count, fn_dtype dtype):
    """A 1-D numpy array over C memory that keeps `owner` (which owns the memory) alive."""
    cdef cnp.npy_intp dims[1]
    dims[0] = <cnp.npy_intp>count
    cdef int typenum = cnp.NPY_FLOAT64 if dtype == FN_FLOAT64 else cnp.NPY_FLOAT32
    cdef cnp.ndarray view = cnp.PyArray_SimpleNewFromData(1, dims, typenum, data)
    cnp.set_array_base(view, owner)
    return view


# ---------------------------------------------------------------------------- process-wide


def version():
    return fn_version().decode()


def allocations():
    """Buffers the C core has allocated so far (constant in a steady-state training loop)."""
    return fn_allocations()


def release_thread_buffers():
    """Frees the built-in GEMM's buffers of this thread and of its OpenMP threads (they
    are otherwise kept for the next call, until those threads exit)."""
    with nogil:
        fn_release_thread_buffers()


def set_num_threads(int n):
    fn_set_num_threads(n)


def get_num_threads():
    return fn_get_num_threads()


def has_openmp():
    return bool(fn_has_openmp())


def set_deterministic(bint on):
    """Reductions split by the problem size alone: the same bits for any thread count."""
    fn_set_deterministic(on)


def get_deterministic():
    return bool(fn_get_deterministic())


def sparse_max_density():
    """The largest fraction of nonzeros at which the products that skip zeros do so (it depends
    on the build's vector instructions)."""
    return fn_sparse_max_density()


cdef void *function_pointer(function, what) except NULL:
    """The address in a PyCapsule (SciPy's cython_blas exports its functions so) or an int."""
    cdef void *address
    if isinstance(function, int):
        address = <void *><uintptr_t>function
    else:
        address = PyCapsule_GetPointer(function, PyCapsule_GetName(function))
    if address == NULL:
        raise ValueError(f"install_blas: {what} is a null pointer")
    return address


def install_blas(sgemm, dgemm, uintptr_t set_threads_local=0):
    """Installs Fortran-ABI sgemm/dgemm, each a PyCapsule or an address, and optionally the
    BLAS's per-thread thread-count setter (an address)."""
    cdef fn_blas table
    table.sgemm = <fn_sgemm_fn>function_pointer(sgemm, "sgemm")
    table.dgemm = <fn_dgemm_fn>function_pointer(dgemm, "dgemm")
    table.set_threads_local = <fn_blas_threads_fn>set_threads_local
    fn_set_blas(&table)


def uninstall_blas():
    fn_set_blas(NULL)


def blas_installed(dtype=FLOAT32):
    return bool(fn_blas_installed(<fn_dtype>dtype))


def gemm(a, b, bint trans_a=False, bint trans_b=False, bint builtin=False, bint blas=False,
         threads=None, out=None, int64_t repeat=1, sparse=None, beta=0.0):
    """op(a) @ op(b) + beta * out through fastnet's GEMM: as training runs it (the BLAS table, or
    the built-in kernel for the sizes it is faster at), the built-in kernel only (``builtin``),
    the BLAS only (``blas``), or the product that skips a's zeros when there are enough of them
    (``sparse="a"``, as a linear layer's forward and input gradient run it) or those of
    whichever of a and b has fewer nonzeros (``sparse="either"``, as its weight gradient runs
    it). ``out``: a C-contiguous array of the result's shape and dtype to write into (no
    allocation per call, for timing small products). ``repeat``: how many times the product is
    computed, in one loop in C (for timing products too small for a Python call each). ``beta``
    other than 0 needs ``out``."""
    if sparse not in (None, "a", "either"):
        raise ValueError(f"gemm: sparse must be None, 'a' or 'either', got {sparse!r}")
    cdef bint sparse_a = sparse is not None, sparse_b = sparse == "either"
    if builtin + blas + sparse_a > 1:
        raise ValueError("gemm: builtin, blas and sparse exclude each other")
    if beta != 0 and out is None:
        raise ValueError("gemm: beta other than 0 needs out")
    if repeat < 1:
        raise ValueError(f"gemm: repeat must be at least 1, got {repeat}")
    cdef cnp.ndarray A = np.ascontiguousarray(a)
    cdef fn_dtype dtype = FN_FLOAT64 if A.dtype == np.float64 else FN_FLOAT32
    A = as_floats(A, dtype, "a")
    cdef cnp.ndarray B = as_floats(b, dtype, "b")
    if A.ndim != 2 or B.ndim != 2:
        raise ValueError("gemm needs 2-D arrays")
    cdef int64_t m = A.shape[1] if trans_a else A.shape[0]
    cdef int64_t k = A.shape[0] if trans_a else A.shape[1]
    cdef int64_t kb = B.shape[1] if trans_b else B.shape[0]
    cdef int64_t n = B.shape[0] if trans_b else B.shape[1]
    if k != kb:
        raise ValueError(f"gemm: inner dimensions differ: {k} and {kb}")
    cdef cnp.ndarray C
    if out is None:
        C = np.zeros((m, n), dtype=numpy_dtype(dtype))
    else:
        C = out
        if np.shape(C) != (m, n) or C.dtype != numpy_dtype(dtype) \
                or not C.flags.c_contiguous or not C.flags.writeable:
            raise ValueError(f"gemm: out must be a writeable C-contiguous "
                             f"{np.dtype(numpy_dtype(dtype))} array of shape {(m, n)}, got "
                             f"{C.dtype} {np.shape(C)}")
    cdef int nthreads = fn_get_num_threads() if threads is None else threads
    if nthreads < 1:
        raise ValueError(f"gemm: threads must be at least 1, got {nthreads}")
    cdef fn_status status = FN_OK
    cdef int64_t r
    cdef double c_beta = beta
    with nogil:
        for r in range(repeat):
            if sparse_a and dtype == FN_FLOAT64:
                fn_gemm_sparse_f64(trans_a, trans_b, m, n, k, <const double *>A.data,
                                   A.shape[1], <const double *>B.data, B.shape[1], c_beta,
                                   <double *>C.data, n, nthreads, False, NULL, False, sparse_b)
            elif sparse_a:
                fn_gemm_sparse_f32(trans_a, trans_b, m, n, k, <const float *>A.data,
                                   A.shape[1], <const float *>B.data, B.shape[1], <float>c_beta,
                                   <float *>C.data, n, nthreads, False, NULL, False, sparse_b)
            elif builtin:
                status = fn_gemm_builtin(dtype, trans_a, trans_b, m, n, k, 1.0, A.data,
                                         A.shape[1], B.data, B.shape[1], c_beta, C.data, n,
                                         nthreads)
            elif blas:
                status = fn_gemm_blas(dtype, trans_a, trans_b, m, n, k, 1.0, A.data, A.shape[1],
                                      B.data, B.shape[1], c_beta, C.data, n, nthreads)
            else:
                status = fn_gemm(dtype, trans_a, trans_b, m, n, k, 1.0, A.data, A.shape[1],
                                 B.data, B.shape[1], c_beta, C.data, n, nthreads)
            if status != FN_OK:
                break
    check(status)
    return C


def softmax_cross_entropy(logits, labels, bint want_grad=True):
    """(mean loss, d loss / d logits or None, number of rows whose argmax is the label) of the
    fused softmax cross-entropy over the last axis."""
    cdef cnp.ndarray z = np.asarray(logits)
    cdef fn_dtype dtype = FN_FLOAT64 if z.dtype == np.float64 else FN_FLOAT32
    z = as_floats(z, dtype, "logits")
    if z.ndim != 2:
        raise ValueError(f"logits must be 2-D (batch, classes), got shape {np.shape(z)}")
    cdef cnp.ndarray y = as_labels(labels, z.shape[0])
    cdef fn_label_type label_type = label_type_of(y)
    cdef cnp.ndarray grad = np.empty_like(z) if want_grad else None
    cdef void *grad_data = grad.data if want_grad else NULL
    cdef double loss = 0
    cdef int64_t correct = 0
    cdef fn_status status
    with nogil:
        status = fn_softmax_xent(dtype, z.data, z.shape[0], z.shape[1], y.data, label_type,
                                 &loss, grad_data, &correct)
    check(status)
    return loss, grad, correct


LOSS_CROSS_ENTROPY = 0
LOSS_MSE = 1
LOSS_L1 = 2
LOSS_HUBER = 3
LOSS_BCE_WITH_LOGITS = 4
LOSS_DISTILLATION = 5


cdef class LossCall:
    """A loss description and its targets as C reads them; holds the arrays they point into."""
    cdef fn_loss loss
    cdef fn_targets targets
    cdef list arrays


cdef const void *target_array(LossCall call, object array, fn_dtype dtype, int64_t n, int64_t c,
                              str what) except? NULL:
    if array is None:
        return NULL
    cdef cnp.ndarray a = as_floats(array, dtype, what)
    if a.ndim != 2 or a.shape[0] != n or a.shape[1] != c:
        raise ValueError(f"{what} must have shape ({n}, {c}) to match the outputs, got "
                         f"{np.shape(a)}")
    call.arrays.append(a)
    return <const void *>a.data


cdef const double *weight_array(LossCall call, object weights, int64_t *count,
                                str what) except? NULL:
    count[0] = 0
    if weights is None:
        return NULL
    cdef cnp.ndarray w = np.ascontiguousarray(weights, dtype=np.float64)
    if w.ndim != 1:
        raise ValueError(f"{what} must be 1-D (one entry per class), got shape {np.shape(w)}")
    call.arrays.append(w)
    count[0] = w.shape[0]
    return <const double *>w.data


LOSS_FIELDS = frozenset({"kind", "label_smoothing", "weight", "temperature", "alpha", "delta",
                         "pos_weight"})


cdef LossCall make_loss_call(dict spec, fn_dtype dtype, int64_t n, int64_t c, object labels,
                             object values, object teacher):
    """spec: {"kind": LOSS_*, and the loss's hyper-parameters by their fn_loss field names}."""
    cdef LossCall call = LossCall()
    call.arrays = []
    if not LOSS_FIELDS.issuperset(spec):
        raise TypeError(f"unknown loss fields {sorted(set(spec) - LOSS_FIELDS)}")
    cdef int kind = spec["kind"]
    call.loss.kind = <fn_loss_kind>kind
    call.loss.label_smoothing = spec.get("label_smoothing", 0.0)
    call.loss.temperature = spec.get("temperature", 0.0)
    call.loss.alpha = spec.get("alpha", 0.0)
    call.loss.delta = spec.get("delta", 0.0)
    call.loss.weight = weight_array(call, spec.get("weight"), &call.loss.weight_count, "weight")
    call.loss.pos_weight = weight_array(call, spec.get("pos_weight"),
                                        &call.loss.pos_weight_count, "pos_weight")
    cdef cnp.ndarray y
    call.targets.labels = NULL
    call.targets.label_type = FN_LABEL_I64
    if labels is not None:
        y = as_labels(labels, n)
        call.targets.label_type = label_type_of(y)
        call.targets.labels = <const void *>y.data
        call.arrays.append(y)
    call.targets.values = target_array(call, values, dtype, n, c, "targets")
    call.targets.teacher = target_array(call, teacher, dtype, n, c, "teacher logits")
    return call


def loss_forward_backward(outputs, dict spec, labels=None, values=None, teacher=None,
                          bint want_grad=True):
    """(loss, d loss / d outputs or None, correct) of the loss described by `spec` (see
    make_loss_call) on outputs (N, C): labels (N,) of any integer dtype, values (N, C) float
    targets, teacher (N, C) teacher logits, as the loss takes them."""
    cdef cnp.ndarray z = np.asarray(outputs)
    cdef fn_dtype dtype = FN_FLOAT64 if z.dtype == np.float64 else FN_FLOAT32
    z = as_floats(z, dtype, "outputs")
    if z.ndim != 2:
        raise ValueError(f"outputs must be 2-D (batch, classes), got shape {np.shape(z)}")
    cdef int64_t n = z.shape[0], c = z.shape[1]
    cdef LossCall call = make_loss_call(spec, dtype, n, c, labels, values, teacher)
    cdef cnp.ndarray grad = np.empty_like(z) if want_grad else None
    cdef void *grad_data = grad.data if want_grad else NULL
    cdef double value = 0
    cdef int64_t correct = 0
    cdef fn_status status
    with nogil:
        status = fn_loss_forward_backward(dtype, z.data, n, c, &call.targets, &call.loss, &value,
                                          grad_data, &correct)
    check(status)
    return value, grad, correct


# ---------------------------------------------------------------------------- models


cdef class Model:
    """A C model handle. fastnet.Sequential wraps it; use this class directly only to drive the C
    runtime from a spec."""

    cdef fn_model *handle
    cdef readonly object np_dtype
    cdef readonly int64_t input_size, output_size

    def __cinit__(self, str spec_json=None, *, bint _empty=False):
        self.handle = NULL
        if spec_json is None:
            if _empty:
                return  # filled by Model.load
            # A Model without a C model behind it would crash on first use.
            raise TypeError("Model needs a spec (JSON text); use Model.load(path) for a file")
        cdef bytes spec = spec_json.encode("utf-8")
        cdef const char *text = spec
        cdef fn_status status
        with nogil:
            status = fn_model_create(text, &self.handle)
        check(status)
        self._describe()

    def __dealloc__(self):
        if self.handle != NULL:
            fn_model_free(self.handle)

    cdef _describe(self):
        self.np_dtype = numpy_dtype(fn_model_dtype(self.handle))
        self.input_size = fn_model_input_size(self.handle)
        self.output_size = fn_model_output_size(self.handle)

    @staticmethod
    def load(path):
        cdef bytes encoded = str(path).encode()
        cdef const char *cpath = encoded
        cdef Model model = Model(None, _empty=True)
        cdef fn_status status
        with nogil:
            status = fn_model_load(cpath, &model.handle)
        check(status)
        model._describe()
        return model

    def save(self, path):
        cdef bytes encoded = str(path).encode()
        cdef const char *cpath = encoded
        cdef fn_status status
        with nogil:
            status = fn_model_save(self.handle, cpath)
        check(status)

    @property
    def spec(self):
        return fn_model_spec(self.handle).decode("utf-8")

    def node_info(self):
        """[(name, op, per-sample output shape)] of the graph's nodes in execution order."""
        cdef fn_node_info info
        out = []
        for i in range(fn_model_node_count(self.handle)):
            check(fn_model_node_info(self.handle, i, &info))
            out.append((info.name.decode(), info.op.decode(),
                        tuple(info.shape[d] for d in range(info.ndim))))
        return out

    def node_output(self, int i):
        """A copy of node i's output (execution order, as node_info) from the last forward or
        train_step: shape (rows, *per-sample shape), rows that forward's batch. RuntimeError if
        there was none, predict has run since (it keeps no activations), or the output is not
        kept (see keep_outputs)."""
        cdef const void *data = NULL
        cdef int64_t rows = 0
        cdef fn_node_info info
        check(fn_model_node_info(self.handle, i, &info))
        check(fn_model_node_output(self.handle, i, &data, &rows))
        shape = (rows,) + tuple(info.shape[d] for d in range(info.ndim))
        cdef int64_t count = rows
        for d in range(info.ndim):
            count *= info.shape[d]
        return np.array(array_view(self, <void *>data, count, fn_model_dtype(self.handle)),
                        copy=True).reshape(shape)

    @property
    def keep_outputs(self):
        """Whether every node's output keeps memory of its own (node_output can read them all).
        False by default: outputs that backward never reads share memory with later ones."""
        return bool(fn_model_keep_outputs(self.handle))

    @keep_outputs.setter
    def keep_outputs(self, bint keep):
        fn_model_set_keep_outputs(self.handle, keep)

    def memory_use(self):
        """Bytes held for running the model, as planned so far: a dict of activations,
        gradients, input, saved (kept from forward to backward) and workspace."""
        cdef fn_memory_use use
        check(fn_model_memory_use(self.handle, &use))
        return {"activations": use.activations, "gradients": use.gradients, "input": use.input,
                "saved": use.saved, "workspace": use.workspace}

    def tensor_info(self):
        """[(name, shape, offset, is_buffer, is_integer)] of every parameter and buffer, in
        state-dict order; offsets are into the parameter or the buffer arena."""
        cdef fn_tensor_info info
        out = []
        for i in range(fn_model_tensor_count(self.handle)):
            check(fn_model_tensor_info(self.handle, i, &info))
            out.append((info.name.decode(), tuple(info.shape[d] for d in range(info.ndim)),
                        info.offset, bool(info.is_buffer), bool(info.is_integer)))
        return out

    def bias_tensors(self):
        """Names of the parameters declared as biases (Linear, Conv2d and batch norm biases)."""
        cdef fn_tensor_info info
        out = []
        for i in range(fn_model_tensor_count(self.handle)):
            check(fn_model_tensor_info(self.handle, i, &info))
            if info.is_bias:
                out.append(info.name.decode())
        return out

    def param_arena(self):
        return array_view(self, fn_model_params(self.handle),
                          fn_model_param_total(self.handle), fn_model_dtype(self.handle))

    def grad_arena(self):
        return array_view(self, fn_model_grads(self.handle),
                          fn_model_param_total(self.handle), fn_model_dtype(self.handle))

    def buffer_arena(self):
        return array_view(self, fn_model_buffers(self.handle),
                          fn_model_buffer_total(self.handle), fn_model_dtype(self.handle))

    @property
    def training(self):
        return bool(fn_model_training(self.handle))

    @training.setter
    def training(self, bint mode):
        fn_model_set_training(self.handle, mode)

    @property
    def rng_step(self):
        return fn_model_rng_step(self.handle)

    @rng_step.setter
    def rng_step(self, uint64_t step):
        fn_model_set_rng_step(self.handle, step)

    def init_params(self, uint64_t seed):
        check(fn_model_init_params(self.handle, seed))

    cdef int64_t _batch(self, cnp.ndarray xs) except -1:
        """The batch size of inputs xs, checked to hold n samples of input_size values (C reads
        exactly that many)."""
        cdef int64_t n = xs.shape[0] if xs.ndim else 0
        if xs.ndim < 2 or xs.size != n * self.input_size:
            raise ValueError(f"input must have shape (N, ...) with {self.input_size} values per "
                             f"sample, got shape {np.shape(xs)}")
        return n

    def forward(self, x, bint keep=False):
        cdef cnp.ndarray xs = as_floats(x, fn_model_dtype(self.handle), "input")
        cdef int64_t n = self._batch(xs)
        cdef cnp.ndarray y = np.empty((n, self.output_size), dtype=self.np_dtype)
        cdef fn_status status
        with nogil:
            status = fn_model_forward(self.handle, xs.data, n, y.data, keep)
        check(status)
        return y

    def predict(self, x):
        """Outputs of x in eval mode whatever the mode (fn_model_predict): in chunks, keeping no
        activations and drawing no dropout masks."""
        cdef cnp.ndarray xs = as_floats(x, fn_model_dtype(self.handle), "input")
        cdef int64_t n = self._batch(xs)
        cdef cnp.ndarray y = np.empty((n, self.output_size), dtype=self.np_dtype)
        cdef fn_status status
        with nogil:
            status = fn_model_predict(self.handle, xs.data, n, y.data)
        check(status)
        return y

    def backward(self, grad_out, bint want_input_grad=True):
        cdef cnp.ndarray g = as_floats(grad_out, fn_model_dtype(self.handle), "grad_out")
        cdef int64_t n = g.shape[0] if g.ndim else 0
        if g.size != n * self.output_size:
            raise ValueError(f"grad_out must have shape ({n}, {self.output_size}), got {np.shape(g)}")
        cdef cnp.ndarray gx = (np.empty((n, self.input_size), dtype=self.np_dtype)
                               if want_input_grad else None)
        cdef void *gx_data = gx.data if want_input_grad else NULL
        cdef fn_status status
        with nogil:
            status = fn_model_backward(self.handle, g.data, n, gx_data)
        check(status)
        return gx

    def zero_grad(self):
        fn_model_zero_grad(self.handle)

    def set_optimizer(self, int kind, double lr, double momentum=0, double dampening=0,
                      bint nesterov=False, double beta1=0.9, double beta2=0.999, double eps=1e-8,
                      double weight_decay=0, bint amsgrad=False, double lr_decay=0,
                      double initial_accumulator_value=0, double alpha=0.99, bint centered=False,
                      bint decoupled_weight_decay=False, double clip_grad_norm=0,
                      double clip_grad_value=0, bint check_finite=False):
        """Sets the optimizer (fn_optimizer's fields; clip_* 0: off). check_finite: compute the
        gradient norm before every update (last_grad_norm) and refuse a non-finite one with
        FloatingPointError, naming the layer (last_nonfinite_layer), changing nothing."""
        cdef fn_optimizer opt
        opt.kind = <fn_optimizer_kind>kind
        opt.lr = lr
        opt.momentum = momentum
        opt.dampening = dampening
        opt.nesterov = nesterov
        opt.beta1 = beta1
        opt.beta2 = beta2
        opt.eps = eps
        opt.weight_decay = weight_decay
        opt.amsgrad = amsgrad
        opt.lr_decay = lr_decay
        opt.initial_accumulator_value = initial_accumulator_value
        opt.alpha = alpha
        opt.centered = centered
        opt.decoupled_weight_decay = decoupled_weight_decay
        opt.clip_grad_norm = clip_grad_norm
        opt.clip_grad_value = clip_grad_value
        opt.check_finite = check_finite
        check(fn_model_set_optimizer(self.handle, &opt))

    def set_param_groups(self, groups, group_of_tensor=None):
        """Sets parameter groups: groups is a list of (lr, weight_decay, l1, max_norm) (max_norm 0:
        none); group_of_tensor the group of each tensor of tensor_info (entries of buffers are
        ignored), or None with one group. An empty list removes the groups."""
        cdef int n = len(groups)
        cdef cnp.ndarray index
        cdef const int *index_data = NULL
        if group_of_tensor is not None:
            index = np.ascontiguousarray(group_of_tensor, dtype=np.intc)
            if index.ndim != 1 or index.shape[0] != fn_model_tensor_count(self.handle):
                raise ValueError(f"group_of_tensor must have {fn_model_tensor_count(self.handle)} "
                                 f"entries (one per tensor), got shape {np.shape(index)}")
            index_data = <const int *>index.data
        cdef fn_param_group *table = <fn_param_group *>malloc(max(n, 1) * sizeof(fn_param_group))
        if table == NULL:
            raise MemoryError("set_param_groups: out of memory")
        try:
            for g, (lr, weight_decay, l1, max_norm) in enumerate(groups):
                table[g].lr = lr
                table[g].weight_decay = weight_decay
                table[g].l1 = l1
                table[g].max_norm = max_norm
            check(fn_model_set_param_groups(self.handle, table, n, index_data))
        finally:
            free(table)

    def param_groups(self):
        """[(lr, weight_decay, l1, max_norm)] of the groups set in C."""
        cdef fn_param_group group
        out = []
        for g in range(fn_model_param_group_count(self.handle)):
            check(fn_model_get_param_group(self.handle, g, &group))
            out.append((group.lr, group.weight_decay, group.l1, group.max_norm))
        return out

    def group_lr(self, int group=0):
        """The learning rate of `group` at the next update (after the C schedule)."""
        return fn_model_group_lr(self.handle, group)

    @property
    def last_grad_norm(self):
        """The gradient norm before clipping of the last update; -1 if it did not compute it."""
        return fn_model_last_grad_norm(self.handle)

    @property
    def last_nonfinite_layer(self):
        """The name of the layer (node) the last train_step or step named when it raised
        FloatingPointError: the first whose output held a non-finite value (a non-finite loss),
        or the first with a non-finite parameter gradient (a non-finite gradient norm). None after
        any other outcome."""
        cdef int node = fn_model_nonfinite_node(self.handle)
        cdef fn_node_info info
        if node < 0:
            return None
        check(fn_model_node_info(self.handle, node, &info))
        return info.name.decode()

    def reset_optimizer(self):
        """Zeroes the optimizer state and counters (a new optimizer starts from nothing)."""
        fn_model_reset_optimizer(self.handle)

    @property
    def momentum_started(self):
        return bool(fn_model_momentum_started(self.handle))

    @momentum_started.setter
    def momentum_started(self, bint started):
        fn_model_set_momentum_started(self.handle, started)

    def step(self):
        cdef fn_status status
        with nogil:
            status = fn_model_step(self.handle)
        check(status)

    @property
    def optimizer_steps(self):
        return fn_model_optimizer_steps(self.handle)

    @optimizer_steps.setter
    def optimizer_steps(self, int64_t steps):
        fn_model_set_optimizer_steps(self.handle, steps)

    def optimizer_state(self):
        """Views of the optimizer's state slots (see fn_model_optimizer_state for their order)."""
        return [array_view(self, fn_model_optimizer_state(self.handle, s),
                           fn_model_param_total(self.handle), fn_model_dtype(self.handle))
                for s in range(fn_model_optimizer_state_count(self.handle))]

    def train_step(self, x, labels=None, dict loss=None, values=None, teacher=None):
        """One fused step (forward, loss, backward, update); the loss before the update.

        loss is a spec as for loss_forward_backward (None: the plain cross-entropy); labels,
        values and teacher are the targets the loss takes."""
        cdef cnp.ndarray xs = as_floats(x, fn_model_dtype(self.handle), "input")
        cdef int64_t n = self._batch(xs)
        cdef LossCall call = make_loss_call(loss if loss is not None else {"kind": 0},
                                            fn_model_dtype(self.handle), n, self.output_size,
                                            labels, values, teacher)
        cdef double value = 0
        cdef fn_status status
        with nogil:
            status = fn_model_train_step_targets(self.handle, xs.data, n, &call.targets,
                                                 &call.loss, &value)
        check(status)
        return value

    @property
    def train_correct(self):
        """Rows of the last train_step whose argmax was the label."""
        return fn_model_train_correct(self.handle)
