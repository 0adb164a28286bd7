"""Data-parallel training over MPI: one model trained by several processes, on one machine or many.

Every process (a *rank*) holds the whole model and optimizer. Each global batch is split into
contiguous shards, one per rank; every rank computes the gradient of its shard, the gradients are
summed with one allreduce over the model's flat gradient arena, and every rank applies the same
optimizer update to the same weights. The weights stay identical on every rank, bit for bit.

Launch with ``mpirun -n P python train.py`` (or ``mpirun -n P fastnet train ...``); without
``mpirun`` the job has one rank and trains as a single process does. mpi4py and an MPI library
are optional dependencies: ``pip install "fastnet[mpi]"`` and the system's Open MPI
(``apt-get install openmpi-bin libopenmpi-dev`` on Debian and Ubuntu).

The contract with a training loop
---------------------------------
Create one :class:`MPIBackend` on every rank, after the model and optimizer exist and after any
checkpoint was loaded, then for every global batch (the same on every rank: same data, same
seeded shuffle)::

    backend = MPIBackend(model, optimizer)          # every rank takes rank 0's weights and state
    for indices in global_batches:                  # identical on every rank
        local = backend.shard(indices)              # this rank's contiguous part (maybe empty)
        loss, correct = backend.train_step(model, x[local], y[local], loss_fn, optimizer,
                                           global_batch_size=len(indices))
    backend.sync_buffers()                          # before evaluating or saving (batch norm)
    if backend.is_root:
        fn.save(model, "model.safetensors")         # one writer

``train_step`` returns the loss of the *global* batch (its mean, as one process computing it on
the whole batch would report it) and the number of correctly classified samples of the global
batch (None for losses without classes), identical on every rank.

What each step does, on every rank:

1. forward of the local shard (:meth:`fastnet.Sequential.forward`);
2. the loss and its gradient on the shard (the loss's fused C kernel), the gradient scaled by
   ``local_norm / global_norm``: the loss's normaliser is the number of samples (elements for
   the losses over every element, the summed class weights of the labels for a weighted
   cross-entropy), so the sum over ranks of the scaled gradients is the gradient of the global
   batch's mean loss, uneven shards included;
3. backward, writing the shard's parameter gradients into the flat gradient arena;
4. one ``MPI_Allreduce`` (sum) in place on that arena: a numpy view of the C memory, passed to MPI
   without copying;
5. the optimizer's update in C (:meth:`fastnet.optim.Optimizer.step`), so gradient clipping by
   norm and the non-finite check see the global gradient, as with one process.

The loss sums travel in a non-blocking allreduce started before backward and finished after the
gradient allreduce; a non-finite global loss raises :class:`FloatingPointError` on every rank
with the weights untouched, as ``model.train_step`` does.

In a Trainer
    - Make the backend with :func:`make_backend` (``distributed=None`` gives None: the usual
      one-process path) after the model, the optimizer and any checkpoint are loaded on every
      rank; a command line can pass ``"mpi"`` when :func:`launched_by_mpirun`.
    - Wrap the epochs in ``with backend.guard():``, so that an error on one rank ends the job
      even if a caller catches it.
    - Draw each epoch's order and batches the same way on every rank (the seeded shuffle already
      does); give :meth:`MPIBackend.train_step` the rank's shard and the global batch's size;
      accumulate ``loss * global_batch_size`` and ``correct`` as with one process. Augment only
      the shard, with a generator seeded by (seed, epoch, batch, rank); a teacher computes the
      shard's logits.
    - Step schedules on every rank alike. Before evaluating and before checkpointing call
      :meth:`MPIBackend.sync_buffers`; evaluate on every rank (the same numbers everywhere), or
      on ``backend.shard_bounds(len(data))`` and sum ``[loss_sum, correct, count]`` with
      :meth:`MPIBackend.allreduce_sum`: plateau schedules and early stopping must decide alike
      on every rank.
    - Print, show progress and write files only where ``backend.is_root``; call
      :meth:`MPIBackend.barrier` after writing a file that other ranks read next.

Sharding
    :meth:`MPIBackend.shard` splits a global batch of ``n`` indices into ``P`` contiguous shards
    whose sizes differ by at most one (the first ``n % P`` ranks take one more, as
    ``numpy.array_split``). A rank whose shard is empty (``n < P``, a short last batch)
    contributes a zero gradient and still takes part in every collective.

Equivalence with one process
    For a model without batch norm or dropout, ``P`` ranks computing global batch ``B`` produce
    the weights one process produces from the same batches, to float32 round-off: the two differ
    only in how the sum over the batch is associated (one process sums the ``B`` per-sample terms
    in its GEMM; here each rank sums its shard and the allreduce sums the ranks). With
    ``deterministic=True`` the ranks' gradients are summed in rank order, each rank reducing one
    slice of the arena (an all-to-all, the sums, and an all-gather: the traffic of a ring
    allreduce), so the result does not depend on the MPI library's choice of reduction algorithm;
    :func:`sharded_step` computes exactly the same sums in one process, and the weights then
    match it bit for bit (with the same kernel thread count, or with any under
    ``fastnet.set_deterministic(True)``, whose kernels' sums do not depend on it).
    With two ranks the plain allreduce (``a + b``) already does.

Batch norm and dropout
    Each rank normalises with the batch statistics of its own shard (as PyTorch's
    DistributedDataParallel does without SyncBatchNorm): with ``B / P`` samples per rank the
    statistics are noisier than one process's over ``B``. Running statistics are updated on each
    rank from its shard; :meth:`MPIBackend.sync_buffers` replaces them with their mean over the
    ranks (counts such as ``num_batches_tracked`` are rank 0's); call it before evaluating,
    saving or checkpointing. Dropout draws different masks on every rank: before each forward the
    model's dropout counter is set to ``step * P + rank`` and afterwards to ``step + 1``, so the
    counter a checkpoint saves is the global step count on every rank.

Only rank 0 writes
    The training loop writes files (metrics, checkpoints, models) and prints only where
    ``backend.is_root``; every rank loads the same checkpoint when resuming (a shared file
    system, or rank 0 reads it and :meth:`MPIBackend.broadcast` sends it). Creating the backend
    broadcasts rank 0's parameters, buffers, seed, dropout counter and optimizer state (its
    hyper-parameters, groups, step count and slots), so a rank that loaded nothing still resumes
    from rank 0's state.

Failures
    A rank that dies must not leave the others waiting in a collective forever. On creation the
    backend installs a ``sys.excepthook`` that prints the traceback and calls ``MPI_Abort``, and
    :meth:`MPIBackend.guard` does the same for any exception leaving its block (a training loop
    wraps its epochs in it, so that an error a caller would catch and turn into an exit status
    still ends the job). Errors raised the same way on every rank at once (a non-finite global
    loss, a batch-size mismatch) pass through ``guard`` unchanged: they carry
    ``all_ranks = True``. A rank killed by a signal is noticed by ``mpirun``, which ends the job.

Threads
    With ``threads="auto"`` (the default) a rank runs ``OMP_NUM_THREADS`` kernel threads when
    that is set (``mpirun -x OMP_NUM_THREADS=8``); otherwise, when the ranks on one machine would
    together run more threads than it has CPUs, each rank's count is lowered to its share
    (``cpu_count // ranks_on_this_machine``, at least 1). ``mpirun`` binds each of up to two
    ranks to a core by default, and then a rank has one CPU anyway; with one rank per machine,
    pass ``--bind-to none`` so that it may use every core.

Communication is not overlapped with backward: the C backward is one call over the whole graph,
and the allreduce of the arena needs every gradient. The README (Data-parallel training over MPI) has the measurements
that say when this matters (on a local machine, little: the step is compute-bound).
"""
import contextlib
import hashlib
import importlib.util
import json
import numbers
import os
import sys
import time
import traceback
import zlib

import numpy as np

INSTALL_HINT = ('install mpi4py and an MPI library: pip install "fastnet[mpi]" (mpi4py) and the '
                "system's Open MPI (Debian and Ubuntu: apt-get install openmpi-bin "
                "libopenmpi-dev)")

# Environment variables that MPI launchers (Open MPI's mpirun, MPICH's and Intel MPI's Hydra,
# PMIx-based launchers, Slurm's srun with PMI) set in every process they start.
_LAUNCHER_SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS")


class MPIUnavailableError(ImportError):
    """Distributed training was asked for, but mpi4py or the MPI library it needs is missing."""


def mpi_available():
    """True if mpi4py is installed (importing it, which starts MPI, is left to the backend)."""
    return importlib.util.find_spec("mpi4py") is not None


def launched_by_mpirun():
    """True if this process was started by an MPI launcher with more than one process.

    Lets a command line choose ``distributed="mpi"`` by itself under ``mpirun -n P`` with
    ``P > 1``, without importing mpi4py otherwise.
    """
    for name in _LAUNCHER_SIZE_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 1:
            return True
    return False


def _import_mpi():
    """mpi4py's MPI module, or MPIUnavailableError saying what to install."""
    try:
        from mpi4py import MPI
    except ImportError as error:
        raise MPIUnavailableError(f'distributed="mpi" needs mpi4py, which is not installed: '
                                  f"{INSTALL_HINT}") from error
    except (RuntimeError, OSError) as error:  # mpi4py present, the MPI library missing or broken
        raise MPIUnavailableError(f'distributed="mpi": mpi4py cannot load an MPI library '
                                  f"({error}); {INSTALL_HINT}") from error
    return MPI


def make_backend(kind, model, optimizer, **options):
    """The backend a training loop asked for by name: None (one process) or ``"mpi"``.

    Parameters
    ----------
    kind : None or {"mpi"}
    model : fastnet.Sequential
    optimizer : fastnet.optim.Optimizer
    **options
        Passed to :class:`MPIBackend`.

    Returns
    -------
    MPIBackend or None

    Raises
    ------
    MPIUnavailableError
        ``"mpi"`` without mpi4py or an MPI library.
    ValueError
        An unknown kind.
    """
    if kind is None:
        return None
    if kind == "mpi":
        return MPIBackend(model, optimizer, **options)
    raise ValueError(f'distributed must be None or "mpi", got {kind!r}')


def shard_bounds(n, size, rank):
    """``(start, stop)`` of rank ``rank``'s contiguous shard of ``n`` items split over ``size``
    ranks: sizes differ by at most one, the first ``n % size`` ranks taking one more.

    Examples
    --------
    >>> [shard_bounds(10, 3, r) for r in range(3)]
    [(0, 4), (4, 7), (7, 10)]
    >>> [shard_bounds(1, 2, r) for r in range(2)]
    [(0, 1), (1, 1)]
    """
    for value, what in ((n, "n"), (size, "size"), (rank, "rank")):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{what} must be an integer, got {value!r}")
    if n < 0 or size < 1 or not 0 <= rank < size:
        raise ValueError(f"need n >= 0, size >= 1 and 0 <= rank < size, got n={n}, size={size}, "
                         f"rank={rank}")
    base, extra = divmod(int(n), int(size))
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def _slice_targets(targets, start, stop):
    """The targets of samples start:stop: arrays are sliced along the first axis, the pair
    (labels, teacher_logits) element-wise."""
    if isinstance(targets, (tuple, list)):
        return type(targets)(np.asarray(t)[start:stop] for t in targets)
    return np.asarray(targets)[start:stop]


def _counts_hits(loss):
    from fastnet.losses import CrossEntropyLoss, DistillationLoss

    return isinstance(loss, (CrossEntropyLoss, DistillationLoss))


def _is_weighted_labels(loss, targets):
    """A class-weighted cross-entropy given labels (whose mean divides by their weights)."""
    from fastnet.losses import CrossEntropyLoss

    if not isinstance(loss, CrossEntropyLoss) or loss.weight is None:
        return False
    targets = np.asarray(targets)
    return not (targets.dtype.kind == "f" and targets.ndim == 2)


def _normaliser(loss, targets, n):
    """What the loss's mean divides by on ``n`` samples, in units in which the plain mean's is
    ``n``: the summed class weights of the labels for a cross-entropy with class weights and
    labels, else ``n`` (the losses over every element divide by ``n * columns``, the same ratio
    between shards)."""
    if n == 0:
        return 0.0
    if _is_weighted_labels(loss, targets):
        # Out-of-range labels are clipped here only to compute a number; the loss kernel
        # refuses them with a message naming the label.
        labels = np.asarray(targets).astype(np.int64, copy=False)
        return float(np.take(loss.weight, labels, mode="clip").sum())
    return float(n)


def _check_step_arguments(model, optimizer, loss):
    from fastnet.losses import Loss
    from fastnet.model import Sequential

    if not isinstance(model, Sequential):
        raise TypeError(f"expected a fastnet model (fastnet.Sequential), got {model!r}")
    if not isinstance(loss, Loss):
        raise TypeError(f"expected a fastnet loss (fastnet.CrossEntropyLoss, ...), got {loss!r}")
    if getattr(optimizer, "model", None) is not model:
        raise ValueError("the optimizer was built over another model's parameters")


def _local_gradient(model, x, targets, loss, norm, global_norm, before_backward=None):
    """Forward, loss and backward of a non-empty shard whose normaliser is ``norm``, leaving in
    the gradient arena the shard's share of the gradient of the global mean (whose normaliser is
    ``global_norm``).

    Returns ``(loss sum, correct)``: the shard's loss times its normaliser, and its correct
    count, which are also passed to ``before_backward`` as soon as they are known. A non-finite
    loss gives NaN and a zero gradient (the caller raises on every rank together).
    """
    n = len(x)
    divisor = norm
    if norm == 0:
        # A class-weighted shard whose labels all weigh 0: the kernel refuses to divide by their
        # sum, yet with label smoothing the rows still have a loss. As one-hot soft targets the
        # rows' terms are the same and the kernel divides by the row count instead.
        onehot = np.zeros((n, model._core.output_size), dtype=model.dtype)
        onehot[np.arange(n), np.asarray(targets).astype(np.int64, copy=False)] = 1
        targets, divisor = onehot, float(n)
    model.zero_grad()
    out = model.forward(x)
    try:
        value, grad, correct = loss._run(out, targets, True)
        result = float(value) * divisor, int(correct or 0)
    except FloatingPointError:
        grad, result = None, (float("nan"), 0)
    if before_backward is not None:
        before_backward(*result)
    if grad is not None:
        scale = divisor / global_norm
        if scale != 1.0:
            grad *= grad.dtype.type(scale)
        model._core.backward(grad, False)  # parameter gradients only: d/dx is not needed
    return result


def _non_finite(value, where):
    error = FloatingPointError(f"{where}: the loss of the global batch is {value}; the weights "
                               "were not updated (lower the learning rate, or check the data)")
    error.all_ranks = True
    return error


def sharded_step(model, x, targets, loss, optimizer, parts):
    """One optimizer step on a global batch, computed in one process as ``parts`` contiguous
    shards exactly as :class:`MPIBackend` with ``deterministic=True`` computes it on ``parts``
    ranks: the same shards, the same scaled gradients summed in rank order, the same dropout
    counters. The weights come out bit for bit the same as the ranks' (batch-norm running
    statistics aside: here each shard updates them in turn).

    Also gradient accumulation: the global batch's gradient from shards that fit in memory.

    Parameters
    ----------
    model : fastnet.Sequential
    x : ndarray, shape (B, *input_shape)
    targets
        What ``loss`` takes for the ``B`` samples (labels, float targets, or the pair
        ``(labels, teacher_logits)``).
    loss : fastnet.losses.Loss
    optimizer : fastnet.optim.Optimizer
    parts : int
        The number of shards (ranks emulated).

    Returns
    -------
    (float, int or None)
        The global batch's mean loss and its correct count (None for losses without classes).

    Examples
    --------
    >>> import numpy as np, fastnet as fn
    >>> x = np.random.default_rng(0).random((6, 8), dtype=np.float32)
    >>> y = np.arange(6) % 4
    >>> a, b = fn.Sequential(fn.Linear(8, 4)), fn.Sequential(fn.Linear(8, 4))
    >>> opt_a, opt_b = fn.optim.SGD(a.parameters(), lr=0.1), fn.optim.SGD(b.parameters(), lr=0.1)
    >>> loss, correct = sharded_step(a, x, y, fn.CrossEntropyLoss(), opt_a, parts=4)
    >>> whole = b.train_step(x, y, fn.CrossEntropyLoss(), opt_b)   # the whole batch at once
    >>> abs(loss - whole) < 1e-6, np.allclose(a.parameters()[0].data, b.parameters()[0].data)
    (True, True)
    """
    _check_step_arguments(model, optimizer, loss)
    if isinstance(parts, bool) or not isinstance(parts, numbers.Integral) or parts < 1:
        raise ValueError(f"parts must be a positive integer, got {parts!r}")
    x = np.asarray(x)
    total = len(x)
    if total < 1:
        raise ValueError("the batch is empty (0 samples)")
    norms = []
    for r in range(parts):
        start, stop = shard_bounds(total, parts, r)
        norms.append(_normaliser(loss, _slice_targets(targets, start, stop), stop - start))
    global_norm = sum(norms)
    if not global_norm > 0:
        raise ValueError("every label of the batch has class weight 0 (the weighted mean "
                         "divides by their sum)")
    core = model._core
    step = core.rng_step
    arena = core.grad_arena()
    total_grad = np.zeros_like(arena)
    loss_sum, correct = 0.0, 0
    try:
        for r in range(parts):
            start, stop = shard_bounds(total, parts, r)
            if stop > start:
                core.rng_step = step * parts + r
                value, hits = _local_gradient(model, x[start:stop],
                                              _slice_targets(targets, start, stop), loss,
                                              norms[r], global_norm)
                loss_sum += value
                correct += hits
                total_grad += arena
    finally:
        core.rng_step = step + 1
    value = loss_sum / global_norm
    if not np.isfinite(value):
        raise _non_finite(value, "sharded_step")
    arena[...] = total_grad
    optimizer.step()
    return value, (correct if _counts_hits(loss) else None)


def _model_fingerprint(model, optimizer):
    """A digest of what must be the same on every rank: the graph (not the seed: parameters are
    broadcast), dtype, arena sizes, and the optimizer's type."""
    spec = json.loads(model._core.spec)
    spec.pop("seed", None)
    text = json.dumps([spec, model._core.param_arena().size, model._core.buffer_arena().size,
                       type(optimizer).__name__ if optimizer is not None else None],
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class MPIBackend:
    """Data-parallel training of one model over MPI (see the module's documentation).

    Create it on every rank (it is a collective call) after the model and optimizer exist and any
    checkpoint was loaded: it checks that every rank built the same model, then broadcasts rank
    0's parameters, buffers, seed, dropout counter and optimizer state.

    Parameters
    ----------
    model : fastnet.Sequential
    optimizer : fastnet.optim.Optimizer, optional
        The optimizer over ``model``; its state is broadcast from rank 0 on creation.
    comm : mpi4py.MPI.Comm, optional
        The communicator of the ranks that train together (``MPI.COMM_WORLD`` by default). The
        backend works on a duplicate, so its messages never mix with the caller's.
    deterministic : bool
        Sum the gradients in rank order, whatever reduction algorithm the MPI library would
        choose: bitwise the same as :func:`sharded_step` for any number of ranks.
    threads : "auto", None or int
        Kernel threads per rank: "auto" takes ``OMP_NUM_THREADS`` when set, else lowers the
        thread count when the ranks on a machine would oversubscribe its CPUs; None leaves it;
        an int sets it.
    abort_on_error : bool
        Install a ``sys.excepthook`` that ends the whole job (``MPI_Abort``) when a rank has an
        uncaught exception (only with more than one rank).

    Attributes
    ----------
    rank, size : int
        This process's rank and the number of ranks.
    is_root : bool
        ``rank == 0``: the rank that writes files and prints.
    local_rank, local_size : int
        Rank among, and number of, the ranks on this machine.
    reduce_seconds : float
        Time spent in the gradient reduction so far (wall clock, on this rank).
    steps : int
        Steps taken through :meth:`train_step`.

    Raises
    ------
    MPIUnavailableError
        mpi4py or an MPI library is missing.
    ValueError
        The ranks built different models (or optimizer types).
    """

    def __init__(self, model, optimizer=None, *, comm=None, deterministic=False, threads="auto",
                 abort_on_error=True):
        from fastnet.model import Sequential

        MPI = _import_mpi()
        if not isinstance(model, Sequential):
            raise TypeError(f"MPIBackend expects a fastnet model (fastnet.Sequential), got "
                            f"{model!r}")
        if optimizer is not None and getattr(optimizer, "model", None) is not model:
            raise ValueError("the optimizer was built over another model's parameters")
        self._MPI = MPI
        self.comm = (comm if comm is not None else MPI.COMM_WORLD).Dup()
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.is_root = self.rank == 0
        local = self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank, self.local_size = local.Get_rank(), local.Get_size()
        local.Free()
        self.model, self.optimizer = model, optimizer
        self.deterministic = bool(deterministic)
        self.reduce_seconds = 0.0
        self.steps = 0
        core = model._core
        self._mpi_type = MPI.DOUBLE if model.dtype == np.float64 else MPI.FLOAT
        self._metrics = np.zeros(4)  # loss sum, normaliser, correct, samples: this rank's
        self._metrics_sum = np.zeros(4)
        self._previous_hook = None
        if abort_on_error and self.size > 1:
            self._install_excepthook()
        self._set_threads(threads)

        fingerprints = self.comm.allgather(_model_fingerprint(model, optimizer))
        differ = [r for r, f in enumerate(fingerprints) if f != fingerprints[0]]
        if differ:
            error = ValueError(f"ranks {differ} built a different model or optimizer than rank 0 "
                               "(every rank must build the same graph, dtype and optimizer type)")
            error.all_ranks = True
            raise error
        # The seed too: with the dropout counter it determines dropout's masks. Re-seeding
        # re-initialises the parameters, which the broadcast then overwrites.
        seed = self.comm.bcast(model.seed, root=0)
        if seed != model.seed:
            core.init_params(seed)
            model.seed = seed
        self.comm.Bcast([core.param_arena(), self._mpi_type], root=0)
        if core.buffer_arena().size:
            self.comm.Bcast([core.buffer_arena(), self._mpi_type], root=0)
        core.rng_step = self.comm.bcast(core.rng_step, root=0)
        if optimizer is not None and self.size > 1:
            state = self.comm.bcast(optimizer.state_dict() if self.is_root else None, root=0)
            if not self.is_root:
                optimizer.load_state_dict(state)

        arena_size = core.grad_arena().size
        self._counts = [shard_bounds(arena_size, self.size, r)[1]
                        - shard_bounds(arena_size, self.size, r)[0] for r in range(self.size)]
        self._displacements = [shard_bounds(arena_size, self.size, r)[0]
                               for r in range(self.size)]
        self._scratch = None  # the deterministic reduction's receive buffer, made on first use

    # ------------------------------------------------------------------ set-up

    def _install_excepthook(self):
        previous = sys.excepthook
        self._previous_hook = previous

        def abort_job(kind, value, tb):
            try:
                previous(kind, value, tb)
            finally:
                self.abort(f"uncaught {kind.__name__}; ending every rank of the job")

        sys.excepthook = abort_job

    def _set_threads(self, threads):
        import fastnet

        if threads is None:
            return
        if threads == "auto":
            requested = os.environ.get("OMP_NUM_THREADS", "")
            if requested.isdigit() and int(requested) > 0:  # e.g. mpirun -x OMP_NUM_THREADS=8
                fastnet.set_num_threads(int(requested))
                return
            share = max(1, (os.cpu_count() or 1) // self.local_size)
            if fastnet.get_num_threads() > share:
                fastnet.set_num_threads(share)
            return
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f'threads must be "auto", None or a positive integer, got '
                             f"{threads!r}")
        fastnet.set_num_threads(threads)

    # ------------------------------------------------------------------ sharding

    def shard_bounds(self, n):
        """``(start, stop)`` of this rank's shard of a global batch of ``n`` samples."""
        return shard_bounds(n, self.size, self.rank)

    def shard(self, global_indices):
        """This rank's contiguous part of a global batch's indices (see :func:`shard_bounds`).

        Parameters
        ----------
        global_indices : array_like of int
            The global batch, the same on every rank.

        Returns
        -------
        ndarray
            ``global_indices[start:stop]``; empty when the batch has fewer samples than ranks.
        """
        indices = np.asarray(global_indices)
        if indices.ndim != 1:
            raise ValueError(f"global_indices must be 1-D, got shape {indices.shape}")
        start, stop = self.shard_bounds(len(indices))
        return indices[start:stop]

    # ------------------------------------------------------------------ training

    def train_step(self, model, x_local, targets_local, loss, optimizer, global_batch_size):
        """One data-parallel training step; a collective call, made by every rank.

        Parameters
        ----------
        model : fastnet.Sequential
            The backend's model.
        x_local : ndarray, shape (n, *input_shape)
            This rank's shard of the global batch (``n`` may be 0).
        targets_local
            What ``loss`` takes for the shard: labels, float targets, or ``(labels,
            teacher_logits)``.
        loss : fastnet.losses.Loss
        optimizer : fastnet.optim.Optimizer
            Over ``model``.
        global_batch_size : int
            The global batch's size: the sum of the shards' sizes over the ranks (checked).

        Returns
        -------
        (float, int or None)
            The global batch's mean loss (before the update) and its number of correctly
            classified samples (None for losses without classes), the same on every rank.

        Raises
        ------
        FloatingPointError
            On every rank, when the global loss is NaN or Inf (weights not updated), or as the
            optimizer raises it (clipping by norm of a non-finite gradient).
        ValueError
            On every rank, when the shards do not add up to ``global_batch_size``, or every label
            of a class-weighted cross-entropy's batch has weight 0.
        """
        if model is not self.model:
            raise ValueError("train_step: this is not the backend's model")
        _check_step_arguments(model, optimizer, loss)
        if isinstance(global_batch_size, bool) or not isinstance(global_batch_size,
                                                                numbers.Integral) \
                or global_batch_size < 1:
            raise ValueError(f"global_batch_size must be a positive integer, got "
                             f"{global_batch_size!r}")
        n = 0 if x_local is None else len(x_local)
        local_norm = _normaliser(loss, targets_local, n)
        if getattr(loss, "weight", None) is not None and _counts_hits(loss):
            # A class-weighted cross-entropy: the global mean divides by the labels' weights
            # (decided by the loss alone, so that every rank makes this call or none does).
            global_norm = self.comm.allreduce(local_norm)
            if not global_norm > 0:
                error = ValueError("train_step: every label of the global batch has class "
                                   "weight 0 (the weighted mean divides by their sum)")
                error.all_ranks = True
                raise error
        else:
            global_norm = float(global_batch_size)
        core = model._core
        step = core.rng_step
        requests = []

        def send_metrics(loss_sum, correct):
            self._metrics[:] = (loss_sum, local_norm, correct, n)
            requests.append(self.comm.Iallreduce(self._metrics, self._metrics_sum,
                                                 op=self._MPI.SUM))

        try:
            if n > 0:
                core.rng_step = step * self.size + self.rank
                _local_gradient(model, x_local, targets_local, loss, local_norm, global_norm,
                                before_backward=send_metrics)
            else:
                model.zero_grad()
                send_metrics(0.0, 0)
        finally:
            core.rng_step = step + 1
        request = requests[0]
        try:
            self.allreduce_gradients()
        finally:
            request.Wait()
        loss_sum, norm_sum, correct_sum, seen = self._metrics_sum
        if int(seen) != global_batch_size:
            error = ValueError(f"train_step: the ranks' shards hold {int(seen)} samples, "
                               f"global_batch_size is {global_batch_size}")
            error.all_ranks = True
            raise error
        global_loss = loss_sum / norm_sum
        if not np.isfinite(global_loss):
            raise _non_finite(global_loss, "train_step")
        optimizer.step()
        self.steps += 1
        return float(global_loss), (int(correct_sum) if _counts_hits(loss) else None)

    def allreduce_gradients(self):
        """Sums the model's gradient arena over the ranks, in place (a collective call). For
        loops that compute gradients themselves; :meth:`train_step` calls it."""
        arena = self.model._core.grad_arena()
        started = time.perf_counter()
        if self.size > 1:
            if self.deterministic:
                self._ordered_allreduce(arena)
            else:
                self.comm.Allreduce(self._MPI.IN_PLACE, [arena, self._mpi_type],
                                    op=self._MPI.SUM)
        self.reduce_seconds += time.perf_counter() - started

    def _ordered_allreduce(self, arena):
        """Rank r sums slice r of every rank's arena in rank order, then every rank gathers every
        slice: the same bits on every rank, for any MPI library and any number of ranks."""
        mine = self._counts[self.rank]
        if self._scratch is None:
            self._scratch = np.empty((self.size, mine), dtype=arena.dtype)
        recv = self._scratch
        self.comm.Alltoallv(
            [arena, (self._counts, self._displacements), self._mpi_type],
            [recv, ([mine] * self.size, [r * mine for r in range(self.size)]), self._mpi_type])
        start = self._displacements[self.rank]
        total = arena[start:start + mine]
        np.copyto(total, recv[0])
        for r in range(1, self.size):
            np.add(total, recv[r], out=total)
        self.comm.Allgatherv(self._MPI.IN_PLACE,
                             [arena, (self._counts, self._displacements), self._mpi_type])

    def sync_buffers(self):
        """Replaces every rank's batch-norm running statistics with their mean over the ranks;
        integer buffers (``num_batches_tracked``) take rank 0's value. A collective call: make
        it before evaluating, saving or checkpointing."""
        core = self.model._core
        buffers = core.buffer_arena()
        if self.size == 1 or buffers.size == 0:
            return
        total = buffers.astype(np.float64)
        integer = np.zeros(buffers.size, dtype=bool)
        for name, shape, offset, is_buffer, is_integer in core.tensor_info():
            if is_buffer and is_integer:
                integer[offset:offset + int(np.prod(shape))] = True
        if not self.is_root:
            total[integer] = 0.0
        self.comm.Allreduce(self._MPI.IN_PLACE, total, op=self._MPI.SUM)
        total[~integer] /= self.size
        buffers[...] = total

    # ------------------------------------------------------------------ collectives

    def allreduce_sum(self, value):
        """The sum over the ranks of a number or an array (a collective call).

        Parameters
        ----------
        value : int, float, ndarray or sequence of numbers

        Returns
        -------
        int, float or ndarray
            A Python int for ints, a float for other numbers, a new array (the input's dtype;
            float64 for a list) for arrays; the same on every rank.
        """
        if isinstance(value, (bool, np.bool_)):
            raise TypeError("allreduce_sum: expected a number or an array, got a bool")
        if isinstance(value, numbers.Integral):
            return int(self.comm.allreduce(int(value), op=self._MPI.SUM))
        if isinstance(value, numbers.Real):
            total = np.array([float(value)])
            self.comm.Allreduce(self._MPI.IN_PLACE, total, op=self._MPI.SUM)
            return float(total[0])
        array = np.array(value, dtype=None if isinstance(value, np.ndarray) else np.float64)
        if array.dtype.kind not in "iuf":
            raise TypeError(f"allreduce_sum: expected numbers, got an array of {array.dtype}")
        array = np.ascontiguousarray(array)
        self.comm.Allreduce(self._MPI.IN_PLACE, array, op=self._MPI.SUM)
        return array

    def broadcast(self, obj, root=0):
        """Rank ``root``'s ``obj`` on every rank (pickled; a collective call)."""
        return self.comm.bcast(obj, root=root)

    def barrier(self):
        """Waits until every rank gets here."""
        self.comm.Barrier()

    def in_sync(self):
        """True if every rank holds bitwise the same parameters and buffers (a collective call:
        a checksum per rank, gathered)."""
        core = self.model._core
        digest = (zlib.crc32(core.param_arena().tobytes()),
                  zlib.crc32(core.buffer_arena().tobytes()))
        return len(set(self.comm.allgather(digest))) == 1

    # ------------------------------------------------------------------ failures

    def abort(self, message=None, code=1):
        """Ends every rank of the job: prints ``message`` (with this rank's number) to stderr,
        then ``MPI_Abort``. Does not return."""
        if message:
            sys.stderr.write(f"fastnet: rank {self.rank} of {self.size}: {message}\n")
        sys.stderr.flush()
        sys.stdout.flush()
        self._MPI.COMM_WORLD.Abort(int(code))

    @contextlib.contextmanager
    def guard(self):
        """A block in which any exception raised on this rank alone ends the whole job.

        Exceptions that every rank raises together (they have ``all_ranks = True``, such as a
        non-finite global loss) propagate as usual; any other prints its traceback and calls
        :meth:`abort` when there is more than one rank, since the other ranks would otherwise
        wait for this one in the next collective forever.
        """
        try:
            yield self
        except BaseException as error:
            if self.size == 1 or getattr(error, "all_ranks", False):
                raise
            traceback.print_exc()
            self.abort(f"{type(error).__name__} on this rank; ending every rank of the job")
            raise  # not reached

    def close(self):
        """Restores the previous ``sys.excepthook`` and frees the communicator (optional)."""
        if self._previous_hook is not None:
            sys.excepthook = self._previous_hook
            self._previous_hook = None
        if self.comm is not None:
            self.comm.Free()
            self.comm = None

    def __repr__(self):
        mode = ", deterministic" if self.deterministic else ""
        return f"MPIBackend(rank={self.rank}, size={self.size}{mode})"
