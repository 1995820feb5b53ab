"""The `keras-cost` command line."""

import argparse
import sys


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer. Received: {text!r}"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer. Received: {value}"
        )
    return value


def _non_negative_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a non-negative integer. Received: {text!r}"
        ) from None
    if value < 0:
        raise argparse.ArgumentTypeError(
            f"expected a non-negative integer. Received: {value}"
        )
    return value


def _sparsity(text):
    value = _float(text, "a sparsity in [0, 1), such as 0.8")
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(
            f"expected a sparsity in [0, 1), the fraction of weights set to zero. Received: {value}"
        )
    return value


def _width(text):
    value = _float(text, "a width fraction in (0, 1], such as 0.5")
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(
            f"expected a width fraction in (0, 1], the share of units and filters kept. Received: {value}"
        )
    return value


def _points(text):
    value = _float(text, "a number of accuracy points, such as 1")
    if value < 0.0:
        raise argparse.ArgumentTypeError(
            f"expected a non-negative number of accuracy points. Received: {value}"
        )
    return value


def _float(text, expected):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}. Received: {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"expected {expected}. Received: {text!r}")
    return value


class _OneLineParser(argparse.ArgumentParser):
    """An argument parser that reports a usage error in one line on stderr."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_compress(commands):
    compress = commands.add_parser(
        "compress",
        help="Compress a saved .keras classifier on your data and report what it saved.",
        description=(
            "Distill, prune and quantize a saved .keras classifier, fine-tuning on "
            "DATA, then write the compressed .keras, a .tflite file, report.md, "
            "report.json and tradeoff.png into the output folder. DATA is an .npz "
            "file with x_train, y_train, x_test and y_test (integer class labels) "
            "or a folder with one sub-folder of images per class."
        ),
    )
    compress.add_argument("model", metavar="MODEL.keras", help="The trained classifier.")
    compress.add_argument("--data", required=True, help="An .npz file or an image folder.")
    compress.add_argument("--out", required=True, help="Output folder, created if missing.")
    compress.add_argument(
        "--prune",
        type=_sparsity,
        default=0.0,
        metavar="SPARSITY",
        help="Fraction of weights to prune during fine-tuning, in [0, 1). Defaults to 0 (no pruning).",
    )
    compress.add_argument(
        "--structured",
        action="store_true",
        help="Prune whole neurons and filters instead of single weights.",
    )
    compress.add_argument(
        "--quantize",
        choices=["int8", "float16", "dynamic"],
        default=None,
        help=(
            "int8: quantization-aware fine-tuning, then a full integer .tflite file. "
            "float16 and dynamic: post-training export. Defaults to float32."
        ),
    )
    compress.add_argument(
        "--distill-width",
        type=_width,
        default=None,
        metavar="FRACTION",
        help=(
            "Distill a student with this fraction of the units and filters of each "
            "Dense and convolution layer, in (0, 1]. Defaults to no distillation."
        ),
    )
    compress.add_argument(
        "--epochs",
        type=_positive_int,
        default=3,
        help="Epochs of each training stage. Defaults to %(default)s.",
    )
    compress.add_argument(
        "--seed",
        type=_non_negative_int,
        default=0,
        help="Seed for weights, dropout and data order. Defaults to %(default)s.",
    )
    compress.add_argument(
        "--max-accuracy-drop",
        type=_points,
        default=None,
        metavar="POINTS",
        help=(
            "Search sparsities 0.9, 0.8, 0.7 and 0.5, with and without int8, for the "
            "strongest compression whose test accuracy stays within POINTS percentage "
            "points of the original. Cannot be combined with --prune."
        ),
    )


def _add_report(commands):
    report = commands.add_parser(
        "report",
        help="Print the cost of a .keras or .tflite model, and its accuracy on data.",
        description=(
            "Print parameters, non-zeros, FLOPs and sizes of a .keras model, or the "
            "size and LiteRT latency of a .tflite file, and with --data the accuracy "
            "on the test split."
        ),
    )
    report.add_argument("model", metavar="MODEL", help="A .keras or .tflite file.")
    report.add_argument(
        "--data",
        default=None,
        help="An .npz file with x_test and y_test, or a folder with one sub-folder of images per class.",
    )


def build_parser():
    """Build the argument parser of the `keras-cost` command.

    Returns:
        An `argparse.ArgumentParser` with one sub-command per job.
    """
    parser = argparse.ArgumentParser(
        prog="keras-cost",
        description="Make Keras 3 models cheaper to train and to deploy.",
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)

    demo = commands.add_parser(
        "demo",
        help="Compress a digits CNN end to end and report what each stage saved.",
        description=(
            "Train a float CNN teacher on the scikit-learn digits, distill a "
            "smaller student, prune it, train it quantization-aware, export "
            "an int8 .tflite file, evaluate that file with LiteRT and write "
            "report.md, report.json and tradeoff.png."
        ),
    )
    demo.add_argument(
        "--out",
        default="keras-cost-demo",
        help="Output folder for the models and reports. Defaults to %(default)s.",
    )
    demo.add_argument(
        "--epochs",
        type=_positive_int,
        default=None,
        help=(
            "Epochs for every training stage. Defaults to a per-stage "
            "schedule tuned to finish in a few minutes on 2 CPU cores."
        ),
    )
    demo.add_argument(
        "--seed",
        type=_non_negative_int,
        default=0,
        help="Seed for weights and data order. Defaults to %(default)s.",
    )
    demo.add_argument(
        "--sparsity",
        type=float,
        default=0.75,
        help="Target fraction of zero weights in the student. Defaults to %(default)s.",
    )
    _add_compress(commands)
    _add_report(commands)
    return parser


def main(argv=None):
    """Run the `keras-cost` command.

    Args:
        argv: Arguments without the program name. Defaults to `sys.argv[1:]`.

    Returns:
        The process exit status.
    """
    args = build_parser().parse_args(argv)

    if args.command == "demo":
        # NOTE: imported here to keep the parser light, but the package's
        # `__init__` already loads TensorFlow, so `--help` still takes seconds.
        from keras_cost.demo import DemoConfig
        from keras_cost.demo import run_demo

        try:
            config = DemoConfig(
                out_dir=args.out,
                epochs=args.epochs,
                seed=args.seed,
                sparsity=args.sparsity,
            )
        except ValueError as error:
            print(f"keras-cost demo: error: {error}", file=sys.stderr)
            return 2
        run_demo(config)
        return 0

    if args.command in ("compress", "report"):
        return _run_model_command(args)

    return 2


def _run_model_command(args):
    # Imported here, like the demo, to keep the parser light.
    from keras_cost import compress

    try:
        if args.command == "report":
            compress.run_report(args.model, args.data)
            return 0
        settings = compress.CompressSettings(
            sparsity=args.prune,
            structured=args.structured,
            quantize=args.quantize,
            distill_width=args.distill_width,
            epochs=args.epochs,
            seed=args.seed,
        )
        compress.run_compress(
            args.model,
            args.data,
            args.out,
            settings=settings,
            max_drop_points=args.max_accuracy_drop,
        )
    except compress.CompressError as error:
        print(f"keras-cost {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
