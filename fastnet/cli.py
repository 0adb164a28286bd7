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
{extra}  info    show the version, the thread count, OpenMP and the BLAS in use

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


# Commands that live in modules of their own: each module has ``SUMMARY`` (one line for the
# command list) and ``register(commands)``, which adds its subparser and returns the handler
# ``handler(args) -> exit status``. They are imported only to build the parser.
EXTRA_COMMANDS = {"check": "fastnet.checks", "plot": "fastnet.plot", "tune": "fastnet.tune",
                  "distill": "fastnet.distill", "bench": "fastnet.bench"}


def _extra_command_modules():
    import importlib

    for command, module in EXTRA_COMMANDS.items():
        yield command, importlib.import_module(module)


def build_parser():
    extra = "".join(f"  {command:<7} {module.SUMMARY}\n"
                    for command, module in _extra_command_modules())
    parser = argparse.ArgumentParser(
        prog="fastnet", description=DESCRIPTION.format(extra=extra),
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
    train.add_argument("--optimizer", default="adam",
                       choices=["sgd", "adam", "adamw", "adagrad", "rmsprop"],
                       help="default: adam")
    train.add_argument("--lr", type=_positive_float, default=None,
                       help="learning rate (default: 1e-3 for adam/adamw/rmsprop, 0.05 for sgd, "
                            "0.01 for adagrad)")
    train.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    train.add_argument("--weight-decay", type=float, default=0.0,
                       help="L2 weight decay (decoupled for adamw; default 0)")
    train.add_argument("--no-decay", default=None, metavar="KINDS",
                       help="exempt these parameters from weight decay and L1, e.g. bias,norm "
                            "(biases and normalisation parameters)")
    train.add_argument("--l1", type=float, default=0.0, help="L1 penalty (default 0)")
    train.add_argument("--max-norm", type=_positive_float, default=None,
                       help="max-norm constraint on each unit's incoming weights")
    train.add_argument("--clip-grad-norm", type=_positive_float, default=None,
                       help="clip gradients to this global L2 norm")
    train.add_argument("--clip-grad-value", type=_positive_float, default=None,
                       help="clip each gradient element to [-v, v]")
    train.add_argument("--init", default=None, metavar="SCHEME",
                       help="weight initialisation of every linear and convolution layer: "
                            "default (PyTorch's), uniform, normal, normal_fan_in, lecun_uniform, "
                            "lecun_normal, xavier_uniform, xavier_normal, he_uniform, he_normal, "
                            "zeros, ones, constant")
    train.add_argument("--bias-init", default=None, metavar="SCHEME",
                       help="bias initialisation: default, zeros, ones, constant, uniform, normal")
    train.add_argument("--schedule", default="constant", metavar="NAME[:K=V,...]",
                       help="learning-rate schedule: constant, step, multistep, exponential, "
                            "inverse_time, cosine or plateau, with its arguments, e.g. "
                            "step:step_size=10,gamma=0.5 or cosine:T_max=40 (default: constant; "
                            "cosine's T_max defaults to the epochs, or the steps with "
                            "--schedule-interval step)")
    train.add_argument("--schedule-interval", default="epoch", choices=["epoch", "step"],
                       help="step the schedule after every epoch (default) or every update")
    train.add_argument("--warmup", type=int, default=0, metavar="N",
                       help="linear learning-rate warm-up over N epochs (or steps)")
    train.add_argument("--loss", default="ce", choices=["ce", "mse", "l1", "huber", "bce"],
                       help="cross-entropy (default), or MSE, L1, Huber or binary cross-entropy "
                            "with logits on one-hot targets")
    train.add_argument("--label-smoothing", type=float, default=0.0,
                       help="cross-entropy label smoothing (default 0)")
    train.add_argument("--teacher", metavar="MODEL_FILE",
                       help="distil from this trained model (a .safetensors file from fastnet): "
                            "the loss becomes the distillation loss")
    train.add_argument("--temperature", type=_positive_float, default=4.0,
                       help="distillation temperature T (default 4)")
    train.add_argument("--alpha", type=float, default=0.9,
                       help="distillation weight of the softened teacher term (default 0.9)")
    train.add_argument("--scale", default="none", choices=["none", "standard", "minmax"],
                       help="input scaling fitted on the training split only (default: none)")
    train.add_argument("--augment", default=None, metavar="T[:ARG],...",
                       help="image augmentation of training batches, e.g. crop:2,flip,noise:0.05 "
                            "(random crop with 2 pixels of padding, horizontal flip, Gaussian "
                            "noise of std 0.05), prepared in a background thread")
    train.add_argument("--balanced", action="store_true",
                       help="draw training samples class-balanced (for imbalanced data)")
    train.add_argument("--recipe", metavar="FILE",
                       help="a JSON or TOML file of these options (names with underscores, e.g. "
                            "batch_size = 32); options given on the command line win")
    train.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    train.add_argument("--seed", type=int, default=0,
                       help="seeds initialisation and shuffling (default 0)")
    train.add_argument("--threads", type=int, default=0,
                       help="threads (default: all CPUs this process may use)")
    train.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    train.add_argument("--out", metavar="DIR",
                       help="write DIR/checkpoint.safetensors after every epoch, "
                            "DIR/best.safetensors (the best epoch by validation loss, or by "
                            "--early-stopping's metric), DIR/model.safetensors at the end and "
                            "DIR/metrics.jsonl (one line per epoch, the last one the test "
                            "result)")
    train.add_argument("--resume", action="store_true",
                       help="continue from DIR/checkpoint.safetensors of --out (bitwise as if "
                            "never stopped, with the same options and thread count); starts "
                            "afresh if there is no checkpoint yet")
    train.add_argument("--checkpoint-every", type=_positive_int, default=None, metavar="N",
                       help="also checkpoint every N updates (mid-epoch; needs --out)")
    train.add_argument("--early-stopping", type=_positive_int, default=None, metavar="PATIENCE",
                       help="stop when the validation metric has not improved for PATIENCE "
                            "epochs, and keep the best epoch's weights")
    train.add_argument("--early-stopping-metric", default="val_loss",
                       choices=["val_loss", "val_accuracy", "train_loss"],
                       help="the metric early stopping and best.safetensors follow "
                            "(default: val_loss)")
    train.add_argument("--min-delta", type=float, default=0.0,
                       help="the smallest change of the metric that counts as an improvement")
    train.add_argument("--average", default=None, metavar="ema:DECAY|polyak",
                       help="average the weights during training (exponential moving average "
                            "with DECAY, e.g. ema:0.999, or the plain mean: polyak); evaluation "
                            "and the saved model use the averaged weights")
    train.add_argument("--on-nonfinite", default="stop", choices=["stop", "skip"],
                       help="on a NaN/Inf loss or gradient: stop with a message naming the "
                            "first layer affected (default), or skip the update and halve the "
                            "learning rate")
    train.add_argument("--deterministic", action="store_true",
                       help="bitwise identical results for any thread count (fixed-order "
                            "reductions; a little slower)")
    train.add_argument("--distributed", default="auto", choices=["auto", "none", "mpi"],
                       help="data-parallel training over MPI (mpirun -n P fastnet train ...): "
                            "auto (the default) uses MPI when started by mpirun with more than "
                            "one process")
    train.add_argument("--no-monitors", action="store_true",
                       help="do not record per-layer update ratios and activation statistics")

    commands.add_parser("info", help="show version, threads, OpenMP and BLAS",
                        description="Show how this fastnet was built and what it will use.")
    parser.extra_handlers = {command: module.register(commands)
                             for command, module in _extra_command_modules()}
    return parser


def image_shape(num_features):
    """One channel of a square image with this many pixels, or None."""
    side = int(round(num_features ** 0.5))
    return (1, side, side) if side * side == num_features else None


def build_model(args, sample_shape, num_classes):
    """The model --model names, and the per-sample shape to feed it."""
    from fastnet import zoo

    options = dict(dtype=args.dtype, seed=args.seed, init=args.init, bias_init=args.bias_init)
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
    default_lr = {"sgd": 0.05, "adagrad": 0.01}.get(args.optimizer, 1e-3)
    lr = args.lr if args.lr is not None else default_lr
    if args.no_decay:
        kinds = tuple(k.strip() for k in args.no_decay.split(",") if k.strip())
        params = fn.optim.param_groups(model, weight_decay=args.weight_decay, no_decay=kinds,
                                       l1=args.l1)
    else:
        params = [{"params": model.parameters(), "l1": args.l1}]
    if args.max_norm is not None:
        for group in params:
            group["max_norm"] = args.max_norm
    options = dict(lr=lr, weight_decay=args.weight_decay, clip_grad_norm=args.clip_grad_norm,
                   clip_grad_value=args.clip_grad_value)
    if args.optimizer in ("sgd", "rmsprop"):
        options["momentum"] = args.momentum if args.optimizer == "sgd" else 0.0
    return cls(params, **options)


def parse_settings(text, what):
    """'name:key=value,key=value' -> (name, {key: value}) with numbers converted."""
    name, _, rest = text.partition(":")
    settings = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"{what}: expected key=value in {text!r}, got {item!r}")
        settings[key.strip()] = _number_or_text(value.strip())
    return name.strip(), settings


def _number_or_text(value):
    for convert in (int, float):
        try:
            return convert(value)
        except ValueError:
            pass
    if "/" in value:  # milestones=10/20/30
        return [_number_or_text(v) for v in value.split("/")]
    return value


def build_schedule(args, optimizer, steps_per_epoch):
    """The --schedule (with --warmup) as a fastnet.schedules object, or None for constant."""
    from fastnet.schedules import make_schedule

    if isinstance(args.schedule, dict):
        settings = dict(args.schedule)
        name = settings.pop("name", "constant")
    else:
        name, settings = parse_settings(args.schedule, "--schedule")
    if name == "constant" and not args.warmup:
        return None
    units = args.epochs * (steps_per_epoch if args.schedule_interval == "step" else 1)
    if name == "cosine":
        settings.setdefault("T_max", max(1, units - args.warmup))
    if name == "plateau":
        return make_schedule(name, optimizer, **settings)
    return make_schedule(name, optimizer, interval=args.schedule_interval,
                         warmup=args.warmup or None, **settings)


def build_loss(args):
    """The loss --loss (or --teacher) asks for, and the teacher model if distilling."""
    import fastnet as fn

    if args.teacher:
        teacher = fn.load(args.teacher)
        return fn.DistillationLoss(temperature=args.temperature, alpha=args.alpha), teacher
    losses = {"ce": lambda: fn.CrossEntropyLoss(label_smoothing=args.label_smoothing),
              "mse": fn.MSELoss, "l1": fn.L1Loss, "huber": fn.HuberLoss,
              "bce": fn.BCEWithLogitsLoss}
    return losses[args.loss](), None


def build_transform(spec, input_shape):
    """--augment 'crop:2,flip,noise:0.05' as a fastnet.augment.Compose, or None."""
    if not spec:
        return None
    from fastnet import augment

    steps = []
    for item in spec.split(",") if isinstance(spec, str) else spec:
        name, _, value = item.partition(":")
        if name in ("crop", "flip") and len(input_shape) != 3:
            raise ValueError(f"--augment {name} needs image inputs (C, H, W); the model takes "
                             f"{input_shape}")
        if name == "crop":
            steps.append(augment.RandomCrop(tuple(input_shape[1:]), padding=int(value or 4)))
        elif name == "flip":
            steps.append(augment.RandomHorizontalFlip(float(value or 0.5)))
        elif name == "noise":
            steps.append(augment.GaussianNoise(float(value or 0.05)))
        else:
            raise ValueError(f"--augment: unknown transform {name!r} (known: crop, flip, noise)")
    return augment.Compose(steps)


def build_averaging(text):
    """--average ema:0.999 | polyak as a fastnet.WeightAveraging, or None."""
    if not text:
        return None
    import fastnet as fn

    name, _, value = text.partition(":")
    if name == "polyak" and not value:
        return fn.WeightAveraging("polyak")
    if name == "ema":
        try:
            return fn.WeightAveraging(float(value or 0.999))
        except ValueError:
            pass
    raise ValueError(f"--average must be ema:DECAY with 0 < DECAY < 1, or polyak; got {text!r}")


def apply_recipe(args, argv, parser):
    """Fills in the options a recipe file sets, unless the command line gave them."""
    from fastnet import zoo

    recipe = zoo.read_description(args.recipe)
    train_parser = parser._subparsers._group_actions[0].choices["train"]
    actions = {a.dest: a for a in train_parser._actions if a.dest != "help"}
    given = {a.dest for a in actions.values()
             if any(arg == o or arg.startswith(o + "=") for o in a.option_strings for arg in argv)}
    for key, value in recipe.items():
        dest = key.replace("-", "_")
        if dest not in actions or dest == "recipe":
            raise ValueError(f"{args.recipe}: unknown option {key!r} (known: "
                             f"{', '.join(sorted(d for d in actions if d != 'recipe'))})")
        if dest in given:
            continue
        action = actions[dest]
        if isinstance(value, str) and action.type is not None:
            value = action.type(value)
        elif isinstance(value, list) and dest in ("hidden", "input_shape"):
            value = tuple(int(v) for v in value)
        if action.choices is not None and value not in action.choices:
            raise ValueError(f"{args.recipe}: {key} must be one of {list(action.choices)}, "
                             f"got {value!r}")
        setattr(args, dest, value)


def prepare_training(args, splits, progress=None, checkpoint_dir=None):
    """What ``fastnet train`` builds from its options, for data already loaded: the model, the
    trainer (optimizer, schedule, loss, augmentation, sampling, early stopping, averaging) and
    the splits reshaped to the model's input and scaled (fitted on the training split only).
    ``fastnet tune`` trains its trials through this too."""
    import fastnet as fn

    model, shape = build_model(args, splits.train.x.shape[1:], splits.train.num_classes)
    if int(np.prod(shape)) != splits.train.num_features:
        raise ValueError(f"the model takes samples of shape {shape}, the data has "
                         f"{splits.train.num_features} values per sample")
    optimizer = build_optimizer(args, model)
    reshape = lambda ds: None if ds is None else fn.Dataset(  # noqa: E731
        ds.x.reshape((len(ds),) + tuple(shape)), ds.y, num_classes=ds.num_classes)
    splits = fn.Splits(reshape(splits.train), reshape(splits.val), reshape(splits.test))
    if args.scale != "none":
        from fastnet.data import MinMaxScaler, Standardizer, scale_splits

        scaler = Standardizer(per="channel" if len(shape) == 3 else "feature") \
            if args.scale == "standard" else MinMaxScaler()
        splits, _ = scale_splits(splits, scaler)
    train = splits.train
    schedule = build_schedule(args, optimizer, -(-len(train) // args.batch_size))
    sampler = None
    if args.balanced:
        from fastnet.data import ClassBalancedSampler

        sampler = ClassBalancedSampler(train.y)
    loss, teacher = build_loss(args)
    early_stopping = None
    if args.early_stopping:
        early_stopping = fn.EarlyStopping(args.early_stopping_metric, patience=args.early_stopping,
                                          min_delta=args.min_delta)
    trainer = fn.Trainer(model, optimizer, loss, seed=args.seed, progress=progress,
                         schedule=schedule, monitor=args.early_stopping_metric,
                         transform=build_transform(args.augment, shape), sampler=sampler,
                         teacher=teacher, checkpoint_dir=checkpoint_dir,
                         checkpoint_every=args.checkpoint_every, early_stopping=early_stopping,
                         averaging=build_averaging(args.average),
                         monitors=not args.no_monitors, on_nonfinite=args.on_nonfinite,
                         deterministic=args.deterministic,
                         distributed=distributed_kind(getattr(args, "distributed", "none")))
    return model, trainer, splits


def distributed_kind(option):
    """--distributed auto|none|mpi as the Trainer's distributed= (auto: MPI under mpirun -n P
    with P > 1)."""
    from fastnet.distributed import launched_by_mpirun

    if option == "auto":
        return "mpi" if launched_by_mpirun() else None
    return None if option == "none" else option


def process_rank(kind):
    """This process's MPI rank (0 without MPI)."""
    if kind is None:
        return 0
    from fastnet.distributed import _import_mpi

    return _import_mpi().COMM_WORLD.Get_rank()


def command_train(args):
    import fastnet as fn

    if args.threads:
        fn.set_num_threads(args.threads)
    if (args.resume or args.checkpoint_every) and not args.out:
        raise ValueError("--resume and --checkpoint-every need --out DIR (where the checkpoint "
                         "is)")
    if process_rank(distributed_kind(args.distributed)) != 0:
        args.quiet = True  # rank 0 alone prints
    splits = fn.load_data(args.data, dtype=args.dtype, seed=args.seed)
    model, trainer, (train, val, test) = prepare_training(
        args, splits, progress=None if not args.quiet else False, checkpoint_dir=args.out)
    if not args.quiet:
        print(f"fastnet {fn.__version__}: {len(train)} training samples, {train.num_features} "
              f"features, {train.num_classes} classes; {fn.get_num_threads()} threads",
              file=sys.stderr)
        print(model, file=sys.stderr)
    history = trainer.fit(train, val, epochs=args.epochs, batch_size=args.batch_size,
                          resume=args.resume)
    if trainer.averaging is not None:  # (after early stopping, the best epoch's average)
        trainer.apply_averaged_weights()
    if not args.quiet:
        for record in history.epochs[-1:]:
            summary = ", ".join(f"{k} {v:.4f}" for k, v in record.items()
                                if k.startswith(("train_", "val_")) and v is not None)
            print(f"epoch {record['epoch']}: {summary}", file=sys.stderr)
    result = {"split": "test"}
    evaluated = trainer.evaluate(test if test is not None else (val or train))
    result.update(evaluated)
    if test is None:
        result["split"] = "val" if val is not None else "train"
    if not trainer.is_root:  # under MPI: the ranks hold the same model; rank 0 writes
        return 0
    if args.out:
        with open(trainer.metrics_path, "a") as f:
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
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if getattr(args, "recipe", None):
        try:
            apply_recipe(args, argv, parser)
        except (ValueError, OSError, argparse.ArgumentTypeError) as error:
            print(f"fastnet {args.command}: error: {error}", file=sys.stderr)
            return 2
    handlers = {"train": command_train, "info": command_info, **parser.extra_handlers}
    try:
        return handlers[args.command](args)
    except (ValueError, TypeError, OSError, FloatingPointError, MemoryError) as error:
        print(f"fastnet {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
