"""The ``fastnet`` command line.

``fastnet train`` with no argument trains an MLP on the bundled digits and reports its test
accuracy; ``fastnet info`` shows how this fastnet was built.
"""
import argparse
import json
import os
import sys

import numpy as np

DESCRIPTION = """\
fastnet trains neural networks on CPUs.

commands:
  train   train a model on a dataset (default: an MLP on the bundled 8x8 digits)
  info    show the version, the thread count, OpenMP and the BLAS in use

Run 'fastnet COMMAND --help' for the options of a command."""


def _hidden_sizes(text):
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 128,64, got {text!r}") from None
    if any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError("hidden sizes must be positive")
    return sizes


def _shape(text):
    try:
        shape = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 1,28,28, got {text!r}") from None
    if not 1 <= len(shape) <= 3 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected 1 to 3 positive sizes, got {text!r}")
    return shape


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def build_parser():
    parser = argparse.ArgumentParser(
        prog="fastnet", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    train = commands.add_parser(
        "train", help="train a model and report its test accuracy",
        description="Train a model. With no options: an MLP (64-128-128-10, ReLU) on the bundled "
                    "8x8 digits with Adam, then its accuracy on the held-out test split.")
    train.add_argument("--data", metavar="PATH",
                       help="dataset: an .npz with arrays x and y (or x_train, y_train, ...), a "
                            "directory of MNIST IDX files, or an IDX images file "
                            "(default: the bundled digits)")
    train.add_argument("--model", default="mlp", metavar="MODEL",
                       help="mlp (default), cnn (a small CNN), resnet (a small residual network "
                            "with batch norm), or a model description file (.json or .toml; "
                            "see the README)")
    train.add_argument("--input-shape", type=_shape, default=None, metavar="C,H,W",
                       help="per-sample shape the data is reshaped to for image models "
                            "(default: one channel of a square image, e.g. 1,8,8 for the digits)")
    train.add_argument("--hidden", type=_hidden_sizes, default=[128, 128], metavar="SIZES",
                       help="hidden layer sizes of the MLP, comma-separated (default: 128,128)")
    train.add_argument("--epochs", type=_positive_int, default=40, help="passes over the "
                       "training split (default: 40)")
    train.add_argument("--batch-size", type=_positive_int, default=64,
                       help="samples per step (default: 64)")
    train.add_argument("--optimizer", default="adam", choices=["sgd", "adam", "adamw"],
                       help="default: adam")
    train.add_argument("--lr", type=_positive_float, default=None,
                       help="learning rate (default: 1e-3 for adam/adamw, 0.05 for sgd)")
    train.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    train.add_argument("--weight-decay", type=float, default=0.0,
                       help="L2 weight decay (decoupled for adamw; default 0)")
    train.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    train.add_argument("--seed", type=int, default=0,
                       help="seeds initialisation and shuffling (default 0)")
    train.add_argument("--threads", type=int, default=0,
                       help="threads (default: all CPUs this process may use)")
    train.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    train.add_argument("--out", metavar="DIR",
                       help="write DIR/model.safetensors and DIR/metrics.jsonl (one line per "
                            "epoch, the last one the test result)")

    commands.add_parser("info", help="show version, threads, OpenMP and BLAS",
                        description="Show how this fastnet was built and what it will use.")
    return parser


def image_shape(num_features):
    """One channel of a square image with this many pixels, or None."""
    side = int(round(num_features ** 0.5))
    return (1, side, side) if side * side == num_features else None


def build_model(args, sample_shape, num_classes):
    """The model --model names, and the per-sample shape to feed it."""
    from fastnet import zoo

    options = dict(dtype=args.dtype, seed=args.seed)
    num_features = int(np.prod(sample_shape))
    if args.model in zoo.ARCHITECTURES:
        builder, images = zoo.ARCHITECTURES[args.model]
        if not images:
            return zoo.mlp(num_features, num_classes, args.hidden, **options), (num_features,)
        shape = args.input_shape or (sample_shape if len(sample_shape) == 3
                                     else image_shape(num_features))
        if shape is None or len(shape) != 3:
            raise ValueError(f"--model {args.model} needs image inputs: pass --input-shape C,H,W "
                             f"for samples of {num_features} values")
        return builder(shape, num_classes, **options), shape
    if not os.path.splitext(args.model)[1].lower() in (".json", ".toml"):
        raise ValueError(f"--model must be mlp, cnn, resnet or a .json/.toml description file, "
                         f"got {args.model!r}")
    description = zoo.read_description(args.model)
    shape = args.input_shape or description.get("input_shape") or (num_features,)
    return zoo.from_description(description, input_shape=shape, **options), tuple(shape)


def build_optimizer(args, model):
    import fastnet as fn

    cls = fn.optim.OPTIMIZERS[args.optimizer]
    lr = args.lr if args.lr is not None else (0.05 if args.optimizer == "sgd" else 1e-3)
    if args.optimizer == "sgd":
        return cls(model.parameters(), lr=lr, momentum=args.momentum,
                   weight_decay=args.weight_decay)
    return cls(model.parameters(), lr=lr, weight_decay=args.weight_decay)


def command_train(args):
    import fastnet as fn

    if args.threads:
        fn.set_num_threads(args.threads)
    splits = fn.load_data(args.data, dtype=args.dtype, seed=args.seed)
    model, shape = build_model(args, splits.train.x.shape[1:], splits.train.num_classes)
    if int(np.prod(shape)) != splits.train.num_features:
        raise ValueError(f"the model takes samples of shape {shape}, the data has "
                         f"{splits.train.num_features} values per sample")
    optimizer = build_optimizer(args, model)
    metrics_path = None
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        metrics_path = os.path.join(args.out, "metrics.jsonl")
        open(metrics_path, "w").close()
    reshape = lambda ds: None if ds is None else fn.Dataset(  # noqa: E731
        ds.x.reshape((len(ds),) + tuple(shape)), ds.y, num_classes=ds.num_classes)
    train, val, test = reshape(splits.train), reshape(splits.val), reshape(splits.test)
    if not args.quiet:
        print(f"fastnet {fn.__version__}: {len(train)} training samples, {train.num_features} "
              f"features, {train.num_classes} classes; {fn.get_num_threads()} threads",
              file=sys.stderr)
        print(model, file=sys.stderr)
    trainer = fn.Trainer(model, optimizer, fn.CrossEntropyLoss(), seed=args.seed,
                         progress=None if not args.quiet else False, metrics_path=metrics_path)
    history = trainer.fit(train, val, epochs=args.epochs, batch_size=args.batch_size)
    if not args.quiet:
        for record in history.epochs[-1:]:
            summary = ", ".join(f"{k} {v:.4f}" for k, v in record.items()
                                if k.startswith(("train_", "val_")))
            print(f"epoch {record['epoch']}: {summary}", file=sys.stderr)
    result = {"split": "test"}
    evaluated = trainer.evaluate(test if test is not None else (val or train))
    result.update(evaluated)
    if test is None:
        result["split"] = "val" if val is not None else "train"
    if metrics_path:
        with open(metrics_path, "a") as f:
            f.write(json.dumps(result) + "\n")
        fn.save(model, os.path.join(args.out, "model.safetensors"))
    print(f"{result['split']} accuracy {result['accuracy']:.4f}, loss {result['loss']:.4f}")
    return 0


def command_info(args):
    import fastnet as fn
    from fastnet import _blas, _core

    print(f"fastnet {fn.__version__}")
    print(f"threads: {fn.get_num_threads()}")
    print(f"OpenMP: {'yes' if _core.has_openmp() else 'no (single-threaded build)'}")
    print(f"BLAS: {_blas.source}")
    return 0


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    handlers = {"train": command_train, "info": command_info}
    try:
        return handlers[args.command](args)
    except (ValueError, TypeError, OSError, FloatingPointError, MemoryError) as error:
        print(f"fastnet {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
