"""Knowledge distillation as a workflow: ``fastnet distill`` trains a student from a saved
teacher's softened outputs and reports the teacher's and the student's accuracy (and, with
``--compare``, the same student's accuracy when trained on the labels alone).

The student is trained by ``fastnet train --teacher`` itself (every option of ``fastnet train``
applies), with the loss :class:`fastnet.DistillationLoss`::

    loss = alpha * T**2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE

The teacher sees the same batches as the student, so both take the same per-sample input shape
(an MLP teacher for an MLP student, an image model for an image model).

Examples
--------
From the shell: train a teacher, then distil it into a 32-unit MLP and compare::

    fastnet train --hidden 256,256 --epochs 30 --out teacher
    fastnet distill --teacher teacher/model.safetensors --hidden 32 --epochs 30 \\
        --temperature 4 --alpha 0.9 --compare --out student

From Python, the same through :func:`fastnet.cli.main`:

>>> import os, tempfile
>>> from fastnet import cli
>>> cli.EXTRA_COMMANDS.setdefault("distill", "fastnet.distill")
'fastnet.distill'
>>> d = tempfile.mkdtemp()
>>> teacher = os.path.join(d, "t")
>>> cli.main(["train", "--quiet", "--epochs", "3", "--out", teacher])  # doctest: +ELLIPSIS
test accuracy ...
0
>>> cli.main(["distill", "--quiet", "--teacher", os.path.join(teacher, "model.safetensors"),
...           "--hidden", "16", "--epochs", "3"])  # doctest: +ELLIPSIS
teacher  test accuracy ...
0
"""
import contextlib
import copy
import io
import os
import sys
import tempfile

import numpy as np

SUMMARY = "train a student model from a saved teacher's softened outputs"


def register(commands):
    from fastnet.tune import copy_train_options

    parser = commands.add_parser(
        "distill", help=SUMMARY,
        description="Knowledge distillation: train a student (the model the training options "
                    "describe, by default a 64-128-128-10 MLP) on a saved teacher's outputs "
                    "softened by --temperature, mixed with the labels by --alpha, then report "
                    "the teacher's and the student's accuracy on the test split. --compare also "
                    "trains the same student (same seed) on the labels alone. Teacher and "
                    "student see the same batches, so they take the same input shape.")
    group = parser.add_argument_group("distillation")
    group.add_argument("--teacher", required=True, metavar="MODEL_FILE",
                       help="the trained teacher (a .safetensors file from fastnet)")
    copy_train_options(commands, group, only=("temperature", "alpha"))
    group.add_argument("--compare", action="store_true",
                       help="also train the same student without the teacher and report its "
                            "accuracy (written to DIR/baseline with --out)")
    group.add_argument("--out", metavar="DIR",
                       help="write the student as fastnet train does (DIR/model.safetensors, "
                            "DIR/metrics.jsonl, checkpoints) and DIR/distill.json (the "
                            "accuracies); with --compare the baseline in DIR/baseline")
    copy_train_options(commands, parser.add_argument_group(
        "training options of the student (as in fastnet train)"),
        exclude=("teacher", "temperature", "alpha", "out"))
    return command_distill


def _prepared_splits(args, shape):
    """The data as ``fastnet train`` feeds it to the model: reshaped to ``shape``, scaled with
    statistics of the training split."""
    import fastnet as fn
    from fastnet.data import MinMaxScaler, Standardizer, scale_splits

    splits = fn.load_data(args.data, dtype=args.dtype, seed=args.seed)
    reshape = lambda ds: None if ds is None else fn.Dataset(  # noqa: E731
        ds.x.reshape((len(ds),) + tuple(shape)), ds.y, num_classes=ds.num_classes)
    splits = fn.Splits(reshape(splits.train), reshape(splits.val), reshape(splits.test))
    if args.scale != "none":
        scaler = (Standardizer(per="channel" if len(shape) == 3 else "feature")
                  if args.scale == "standard" else MinMaxScaler())
        splits, _ = scale_splits(splits, scaler)
    return splits


def evaluate_model(model, data, batch_size=512):
    """``{"accuracy", "loss"}`` of a model on a Dataset: the argmax's accuracy and the mean
    cross-entropy of its logits, in eval mode.

    Examples
    --------
    >>> import fastnet as fn
    >>> from fastnet.distill import evaluate_model
    >>> result = evaluate_model(fn.Sequential(fn.Linear(64, 10)), fn.load_digits().test)
    >>> sorted(result)
    ['accuracy', 'loss']
    """
    import fastnet as fn

    loss = fn.CrossEntropyLoss()
    loss_sum, correct = 0.0, 0
    with model.mode(training=False):
        for start in range(0, len(data), batch_size):
            xb, yb = data.x[start:start + batch_size], data.y[start:start + batch_size]
            logits = model(xb)
            loss_sum += loss(logits, yb) * len(xb)
            correct += int(np.count_nonzero(logits.argmax(axis=1) == yb))
    return {"accuracy": correct / len(data), "loss": loss_sum / len(data)}


def _train_quietly(args):
    """Runs ``fastnet train`` with these options, keeping its result line off stdout."""
    from fastnet import cli

    with contextlib.redirect_stdout(io.StringIO()):
        return cli.command_train(args)


def command_distill(args):
    import fastnet as fn
    from fastnet import cli
    from fastnet.tune import write_json

    if args.threads:
        fn.set_num_threads(args.threads)
    teacher = fn.load(args.teacher)
    raw = fn.load_data(args.data, dtype=args.dtype, seed=args.seed)
    num_classes = raw.train.num_classes
    student, shape = cli.build_model(args, raw.train.x.shape[1:], num_classes)
    del raw
    if tuple(shape) != tuple(teacher.input_shape):
        raise ValueError(f"--teacher {args.teacher} takes samples of shape "
                         f"{tuple(teacher.input_shape)} and the student {tuple(shape)}: both "
                         f"see the same batches, so they must take the same shape (an image "
                         f"teacher needs an image student, --model cnn or --input-shape)")
    teacher_outputs = teacher._core.output_size
    if teacher_outputs != student._core.output_size:
        raise ValueError(f"--teacher {args.teacher} has {teacher_outputs} outputs and the data "
                         f"{num_classes} classes")
    splits = _prepared_splits(args, shape)
    split = "test" if splits.test is not None else ("val" if splits.val is not None else "train")
    evaluation = getattr(splits, split)
    results = {"split": split, "temperature": args.temperature, "alpha": args.alpha}
    results["teacher"] = {"path": os.path.abspath(args.teacher),
                          "parameters": teacher.num_parameters(),
                          **evaluate_model(teacher, evaluation)}
    with contextlib.ExitStack() as stack:
        out = args.out or stack.enter_context(tempfile.TemporaryDirectory())
        if not args.quiet:
            print(f"fastnet distill: a student of {student.num_parameters():,} parameters from "
                  f"the teacher {args.teacher} ({teacher.num_parameters():,} parameters), "
                  f"T={args.temperature:g}, alpha={args.alpha:g}", file=sys.stderr)
        student_args = copy.copy(args)
        student_args.out = out
        _train_quietly(student_args)
        path = os.path.join(out, "model.safetensors")
        student = fn.load(path)
        results["student"] = {"path": os.path.abspath(path) if args.out else None,
                              "parameters": student.num_parameters(),
                              **evaluate_model(student, evaluation)}
        if args.compare:
            if not args.quiet:
                print("fastnet distill: the same student trained on the labels alone",
                      file=sys.stderr)
            baseline_args = copy.copy(args)
            baseline_args.teacher = None
            baseline_args.out = os.path.join(out, "baseline")
            _train_quietly(baseline_args)
            path = os.path.join(out, "baseline", "model.safetensors")
            results["baseline"] = {"path": os.path.abspath(path) if args.out else None,
                                   "parameters": student.num_parameters(),
                                   **evaluate_model(fn.load(path), evaluation)}
    rows = [("teacher", results["teacher"], f"{results['teacher']['parameters']:,} parameters"),
            ("student", results["student"],
             f"{results['student']['parameters']:,} parameters, distilled with "
             f"T={args.temperature:g}, alpha={args.alpha:g}")]
    if "baseline" in results:
        rows.append(("baseline", results["baseline"],
                     "the same student trained without the teacher"))
    width = max(len(name) for name, _, _ in rows)
    for name, result, note in rows:
        print(f"{name:<{width}}  {split} accuracy {result['accuracy']:.4f}, loss "
              f"{result['loss']:.4f}  ({note})")
    if args.out:
        write_json(os.path.join(args.out, "distill.json"), results)
    return 0
