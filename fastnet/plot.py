"""Plots of a training run from its ``metrics.jsonl`` (``fastnet train --out DIR`` writes one).

``fastnet plot DIR`` and :func:`plot_run` write PNG files next to the metrics: the loss and
accuracy curves (training and validation), the update/weight ratio of every layer, and, when the
run recorded them, the activation statistics per layer and the learning rate and gradient norm.

matplotlib is an optional dependency: ``pip install 'fastnet[plot]'`` (or ``pip install
matplotlib``). Figures are drawn with the Agg backend directly, without pyplot, so plotting
needs no display and leaves pyplot's backend alone.
"""
import json
import math
import os
import sys

METRICS = "metrics.jsonl"

#: The update/weight ratio is healthy around 1e-3 per step; the band drawn spans half a decade
#: either side.
HEALTHY_RATIO = 1e-3
HEALTHY_BAND = (10 ** -3.5, 10 ** -2.5)

MISSING_MATPLOTLIB = ("plotting needs matplotlib, which is not installed: install it with "
                      "pip install 'fastnet[plot]' (or pip install matplotlib)")


def _matplotlib():
    """(Figure, FigureCanvasAgg, NullFormatter), or ImportError saying what to install."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import NullFormatter
    except ImportError as error:
        raise ImportError(MISSING_MATPLOTLIB) from error
    return Figure, FigureCanvasAgg, NullFormatter


def read_metrics(path):
    """The per-epoch records of a metrics file (or of ``DIR/metrics.jsonl``).

    Lines without an ``"epoch"`` (such as the final ``{"split": "test", ...}`` result) are left
    out, and so is an unfinished last line (a run still writing). Records are sorted by epoch; a
    resumed run that wrote an epoch twice keeps the later line.

    Parameters
    ----------
    path : str or os.PathLike
        The metrics file, or the run directory holding ``metrics.jsonl``.

    Returns
    -------
    list of dict

    Raises
    ------
    FileNotFoundError
        No such directory or file.
    ValueError
        A line that is not JSON, or no epoch record at all.

    Examples
    --------
    >>> import json, os, tempfile
    >>> from fastnet.plot import read_metrics
    >>> run = tempfile.mkdtemp()
    >>> with open(os.path.join(run, "metrics.jsonl"), "w") as f:
    ...     print(json.dumps({"epoch": 1, "train_loss": 0.9}), file=f)
    ...     print(json.dumps({"split": "test", "accuracy": 0.8}), file=f)
    >>> read_metrics(run)
    [{'epoch': 1, 'train_loss': 0.9}]
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        directory, path = path, os.path.join(path, METRICS)
        if not os.path.exists(path):
            raise FileNotFoundError(f"no {METRICS} in {directory} (fastnet train --out "
                                    f"{directory} writes one)")
    elif not os.path.exists(path):
        raise FileNotFoundError(f"no such run directory or metrics file: {path}")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    lines = text.split("\n")
    unfinished = lines.pop() if lines else ""  # after the last newline: empty when complete
    records = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}, line {number}: not valid JSON ({error.msg})") from None
        if isinstance(record, dict) and isinstance(record.get("epoch"), int):
            records[record["epoch"]] = record
    if unfinished.strip():
        try:
            record = json.loads(unfinished)
        except json.JSONDecodeError:
            record = None  # being written
        if isinstance(record, dict) and isinstance(record.get("epoch"), int):
            records[record["epoch"]] = record
    if not records:
        raise ValueError(f"{path} has no epoch records (lines with an \"epoch\"): nothing to plot")
    return [records[epoch] for epoch in sorted(records)]


def _series(records, key):
    """(epochs, values) of a scalar metric, leaving out epochs without a number."""
    epochs, values = [], []
    for record in records:
        value = record.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            epochs.append(record["epoch"])
            values.append(float(value))
    return epochs, values


def _per_layer(records, key):
    """{layer: (epochs, values)} of a per-layer metric (a dict per record), layers in the order
    they first appear."""
    out = {}
    for record in records:
        values = record.get(key)
        if not isinstance(values, dict):
            continue
        for layer, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) \
                    and math.isfinite(value):
                epochs, series = out.setdefault(str(layer), ([], []))
                epochs.append(record["epoch"])
                series.append(float(value))
    return out


def _legend(axes, count):
    if count:
        axes.legend(fontsize="small" if count <= 8 else "x-small",
                    ncol=1 if count <= 10 else 2, frameon=False)


def _save(figure, canvas_class, path):
    canvas_class(figure)
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=100)
    return path


def _curves(records, keys):
    """[(label, epochs, values)] of the metrics in ``keys`` that the records have."""
    curves = []
    for key, label in keys:
        epochs, values = _series(records, key)
        if values:
            curves.append((label, epochs, values))
    return curves


def plot_run(directory, out=None):
    """Writes the plots of a run as PNG files and returns their paths.

    Reads ``directory/metrics.jsonl`` (see :func:`read_metrics`) and writes into ``out``
    (default: ``directory``), each only when the run recorded what it shows:

    - ``loss.png``: training and validation loss per epoch;
    - ``accuracy.png``: training and validation accuracy;
    - ``update_ratio.png``: per layer, the size of the epoch's last update relative to the
      weights, on a log scale, with the healthy band around 1e-3 shaded (much lower: the layer
      barely learns; much higher: the learning rate is too large for it);
    - ``activations.png``: per layer, the activation std, the fraction of dead ReLU units and of
      saturated tanh/sigmoid units;
    - ``lr.png``: the learning rate and the gradient norm.

    Parameters
    ----------
    directory : str or os.PathLike
        The run directory (``fastnet train --out DIR``).
    out : str or os.PathLike, optional
        Where the PNG files go; created if missing.

    Returns
    -------
    list of str
        The files written.

    Raises
    ------
    ImportError
        matplotlib is not installed (the message says what to install).
    FileNotFoundError, ValueError
        See :func:`read_metrics`.

    Examples
    --------
    >>> import json, os, tempfile
    >>> from fastnet.plot import plot_run
    >>> run = tempfile.mkdtemp()
    >>> with open(os.path.join(run, "metrics.jsonl"), "w") as f:
    ...     for epoch in (1, 2, 3):
    ...         print(json.dumps({"epoch": epoch, "train_loss": 1 / epoch, "val_loss": 1.2 / epoch,
    ...                           "update_ratio": {"0": 1e-3 / epoch}}), file=f)
    >>> [os.path.basename(p) for p in plot_run(run)]
    ['loss.png', 'update_ratio.png']
    """
    Figure, Canvas, NullFormatter = _matplotlib()
    records = read_metrics(directory)
    out = os.fspath(directory if out is None else out)
    if os.path.isfile(out):
        out = os.path.dirname(out) or "."
    os.makedirs(out, exist_ok=True)
    written = []

    for name, keys, ylabel, title in (
            ("loss.png", [("train_loss", "train"), ("val_loss", "validation")], "loss", "Loss"),
            ("accuracy.png", [("train_accuracy", "train"), ("val_accuracy", "validation")],
             "accuracy", "Accuracy")):
        curves = _curves(records, keys)
        if not curves:
            continue
        figure = Figure(figsize=(6.4, 4.2))
        axes = figure.add_subplot()
        for label, epochs, values in curves:
            axes.plot(epochs, values, marker="o" if len(epochs) < 30 else None, markersize=3,
                      label=label)
        axes.set_xlabel("epoch")
        axes.set_ylabel(ylabel)
        axes.set_title(title)
        axes.grid(alpha=0.3)
        _legend(axes, len(curves))
        written.append(_save(figure, Canvas, os.path.join(out, name)))

    ratios = {layer: s for layer, s in _per_layer(records, "update_ratio").items()
              if any(v > 0 for v in s[1])}
    if ratios:
        figure = Figure(figsize=(7.2, 4.6))
        axes = figure.add_subplot()
        axes.axhspan(*HEALTHY_BAND, color="tab:green", alpha=0.12,
                     label=f"healthy (~{HEALTHY_RATIO:g})")
        axes.axhline(HEALTHY_RATIO, color="tab:green", linewidth=0.8, linestyle="--")
        for layer, (epochs, values) in ratios.items():
            points = [(e, v) for e, v in zip(epochs, values) if v > 0]  # log scale
            axes.plot([e for e, _ in points], [v for _, v in points], label=layer)
        axes.set_yscale("log")
        axes.set_xlabel("epoch")
        axes.set_ylabel("|update| / |weights|")
        axes.set_title("Update/weight ratio per layer")
        axes.grid(alpha=0.3, which="both")
        _legend(axes, len(ratios) + 1)
        written.append(_save(figure, Canvas, os.path.join(out, "update_ratio.png")))

    panels = [(key, label, _per_layer(records, key)) for key, label in (
        ("activation_std", "activation std"), ("dead_fraction", "dead ReLU units"),
        ("saturated_fraction", "saturated units"))]
    panels = [p for p in panels if p[2]]
    if panels:
        figure = Figure(figsize=(6.4, 3.2 * len(panels)))
        for i, (key, label, layers) in enumerate(panels):
            axes = figure.add_subplot(len(panels), 1, i + 1)
            for layer, (epochs, values) in layers.items():
                axes.plot(epochs, values, label=layer)
            if key == "activation_std" and all(v > 0 for _, vs in layers.values() for v in vs):
                axes.set_yscale("log")
                axes.yaxis.set_minor_formatter(NullFormatter())
            elif key != "activation_std":
                axes.set_ylim(-0.02, 1.02)
            axes.set_ylabel(label)
            axes.grid(alpha=0.3)
            _legend(axes, len(layers))
        axes.set_xlabel("epoch")
        figure.suptitle("Activations per layer")
        written.append(_save(figure, Canvas, os.path.join(out, "activations.png")))

    lr = _series(records, "lr")
    grad_norm = _series(records, "grad_norm")
    if lr[1] or grad_norm[1]:
        rows = [(series, label) for series, label in ((lr, "learning rate"),
                                                      (grad_norm, "gradient norm")) if series[1]]
        figure = Figure(figsize=(6.4, 3.0 * len(rows)))
        for i, ((epochs, values), label) in enumerate(rows):
            axes = figure.add_subplot(len(rows), 1, i + 1)
            axes.plot(epochs, values)
            if all(v > 0 for v in values):
                axes.set_yscale("log")
            axes.set_ylabel(label)
            axes.grid(alpha=0.3, which="both")
        axes.set_xlabel("epoch")
        written.append(_save(figure, Canvas, os.path.join(out, "lr.png")))
    return written


# --------------------------------------------------------------------------- the command


SUMMARY = "plot a run's metrics.jsonl: loss, accuracy, update ratios"


def register(commands):
    """Adds ``fastnet plot`` to the command line's subparsers; returns its handler."""
    plot = commands.add_parser(
        "plot", help="plot a training run's metrics as PNG files",
        description="Read DIR/metrics.jsonl (written by 'fastnet train --out DIR') and write "
                    "PNG plots into DIR: loss.png and accuracy.png (training and validation), "
                    "update_ratio.png (per layer, log scale, the healthy band around 1e-3 "
                    "shaded) and, when recorded, activations.png and lr.png. Needs matplotlib: "
                    "pip install 'fastnet[plot]'.")
    plot.add_argument("directory", metavar="DIR", help="the run directory")
    plot.add_argument("--out", metavar="OUT_DIR", default=None,
                      help="write the PNG files here instead of DIR")
    return command_plot


def command_plot(args):
    """``fastnet plot DIR``: prints the files written; 2 when matplotlib is missing."""
    try:
        written = plot_run(args.directory, out=args.out)
    except ImportError as error:
        print(f"fastnet plot: error: {error}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0
