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


def build_parser():
    """Build the argument parser of the `keras-cost` command.

    Returns:
        An `argparse.ArgumentParser` with one sub-command per job.
    """
    parser = argparse.ArgumentParser(
        prog="keras-cost",
        description="Make Keras 3 models cheaper to train and to deploy.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

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
        # Imported here so that `keras-cost --help` answers without loading
        # TensorFlow.
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

    return 2


if __name__ == "__main__":
    sys.exit(main())
