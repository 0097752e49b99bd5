"""The commands that read digits: `predict` (files, or Kaggle's test.csv), `serve` (the drawing
page and HTTP API) and `feedback` (people's corrections from it, as IDX files)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .cli_options import (
    DEFAULT_THRESHOLD,
    EXIT_ERROR,
    EXIT_OK,
    Commands,
    _device_option,
    _model_option,
    _runtime_option,
    _stderr,
)
from .errors import MnistDigitsError

if TYPE_CHECKING:
    from .predict import NumberReading, Prediction, Recognizer


def add_predict(commands: Commands) -> None:
    p = commands.add_parser(
        "predict",
        help="read the handwritten digit in each image (or the number, with --multi)",
        description="Recognize digits in image files (PNG, JPEG, BMP, GIF, WebP, TIFF: photos, scans, "
        "drawings, any size, ink darker or lighter than the paper), folders of them and globs. Each "
        "image is first brought to MNIST's form: ink light on black, lighting and noise removed, "
        "scaled to a 20 px box and centred by its mass in 28x28.",
    )
    p.add_argument(
        "paths", nargs="*", metavar="PATH", help="image files, folders (the images in them) or globs"
    )
    _model_option(p, tta=True)
    output = p.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="machine-readable output")
    output.add_argument("--csv", action="store_true", help="CSV output")
    p.add_argument(
        "--multi",
        action="store_true",
        help="each image holds a number: find its digits and read them left to right",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        metavar="P",
        help=f"answers less probable than this are marked uncertain (default: {DEFAULT_THRESHOLD})",
    )
    p.add_argument(
        "--save-inputs", type=Path, metavar="DIR", help="write the 28x28 images the model saw here (PNG)"
    )
    p.add_argument(
        "--kaggle",
        type=Path,
        metavar="CSV",
        help="Kaggle Digit Recognizer's test.csv: predict every row and write a submission to -o",
    )
    p.add_argument(
        "-o", "--output", type=Path, metavar="FILE", help="with --kaggle: the submission CSV to write"
    )
    _runtime_option(p)  # an .onnx --model is used as it is, whatever the runtime
    p.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="processes that open and preprocess the images (default: one per core; 1: all in this "
        "process); fewer than 64 images are always read in this process",
    )
    _device_option(p, precision=True)
    p.set_defaults(run=run_predict)


def run_predict(args: argparse.Namespace) -> int:
    from . import predict
    from . import results as shown
    from .images import expand_paths

    if not 0.0 <= args.threshold <= 1.0:
        raise MnistDigitsError(f"--threshold {args.threshold} is not a probability; give one from 0 to 1.")
    if args.kaggle and (args.paths or args.multi or not args.output):
        raise MnistDigitsError("--kaggle takes test.csv and -o FILE (the submission); no PATHs, no --multi.")
    if args.output and not args.kaggle:
        raise MnistDigitsError("-o is for the Kaggle submission: use it with --kaggle test.csv.")
    if not args.kaggle and not args.paths:
        raise MnistDigitsError("give image files, folders or globs (or --kaggle test.csv -o submission.csv).")
    if args.workers is not None and args.workers < 1:
        raise MnistDigitsError(f"--workers {args.workers}: give 1 or more.")
    recognizer = predict.load_model(
        args.model,
        args.device,
        args.threshold,
        tta=args.tta,
        runtime=args.runtime,
        workers=args.workers,
        precision=args.precision,
    )
    if args.kaggle:
        from .kaggle import predict_submission

        submission = predict_submission(recognizer, args.kaggle, args.output)
        _say_runtime(recognizer)
        print(
            f"wrote {submission.count:,} predictions to {submission.path}; {submission.uncertain} "
            f"uncertain (below {args.threshold:.0%})"
        )
        return EXIT_OK

    # Folders and globs that yield nothing keep their place in the output, as an error row.
    entries = expand_paths(args.paths)
    files = [path for path, problem in entries if problem is None]
    results: Sequence[Prediction | NumberReading]
    if args.multi:
        read = iter(recognizer.read_number(files))
        readings = [next(read) if p is None else predict.NumberReading.failure(s, p) for s, p in entries]
        table, rows = shown.format_numbers(readings, args.threshold), shown.numbers_csv(readings)
        results, digits = readings, [d for r in readings for d in r.digits]
    else:
        found = iter(recognizer.predict(files))
        predictions = [next(found) if p is None else predict.Prediction.failure(s, p) for s, p in entries]
        table = shown.format_predictions(predictions, args.threshold)
        rows = shown.predictions_csv(predictions)
        results, digits = predictions, predictions
    _say_runtime(recognizer)
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        print(rows if args.csv else table, end="" if args.csv else "\n")
    if args.save_inputs:
        written = shown.save_inputs(args.save_inputs, digits)
        _stderr(f"wrote {len(written)} model inputs (28x28 PNG) to {args.save_inputs}")
    failed = [r for r in results if r.error and r.error != predict.NO_DIGIT]
    return EXIT_ERROR if failed else EXIT_OK


def _say_runtime(recognizer: Recognizer) -> None:
    """The runtime auto chose (or found cached), on stderr; nothing when none was chosen or one was given."""
    if recognizer.runtime_choice is not None:
        _stderr(recognizer.describe())


def add_serve(commands: Commands) -> None:
    p = commands.add_parser(
        "serve",
        help="serve the drawing page and the HTTP API",
        description="A web page to draw a digit and see the answer live, and the HTTP API behind it "
        "(docs at /docs). Listens on 127.0.0.1 only unless --host says otherwise.",
    )
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="TCP port; 0 picks a free one (default: 8000)")
    _model_option(p, tta=True)
    _device_option(p, precision=True)
    _runtime_option(p, when="as the server starts")
    p.add_argument(
        "--feedback-db",
        type=Path,
        metavar="FILE",
        help="SQLite file for people's corrections (default: feedback.sqlite3 in the user data directory)",
    )
    p.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="another web origin allowed to call the API from a browser, e.g. https://example.org "
        "(repeatable; none by default)",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=64,
        metavar="N",
        help="open connections at once; a request on one more is answered 503 (default: 64)",
    )
    p.add_argument(
        "--header-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="time a client has to send a request's line and headers (default: 10)",
    )
    p.add_argument(
        "--body-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="time a client has to send a request's body, at most 4 MiB (default: 30)",
    )
    p.add_argument(
        "--keep-alive-timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="an idle connection is closed after this (default: 5)",
    )
    p.set_defaults(run=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from .serve import ServeConfig, run

    config = ServeConfig(
        model=args.model,
        host=args.host,
        port=args.port,
        device=args.device,
        precision=args.precision,
        runtime=args.runtime,
        tta=args.tta,
        feedback_db=args.feedback_db,
        allowed_origins=tuple(args.allow_origin),
        max_connections=args.max_connections,
        header_timeout=args.header_timeout,
        body_timeout=args.body_timeout,
        keep_alive_timeout=args.keep_alive_timeout,
    )
    run(config, announce=lambda line: print(line, flush=True))
    return EXIT_OK


def add_feedback(commands: Commands) -> None:
    p = commands.add_parser(
        "feedback",
        help="export people's corrections from the server's database",
        description="The corrections people gave on the drawing page, as MNIST-format IDX files.",
    )
    feedback_commands = p.add_subparsers(dest="feedback_command", required=True, metavar="ACTION")
    p = feedback_commands.add_parser(
        "export",
        help="write the corrections as IDX files (for `train --extra-idx`)",
        description="Write feedback-images-idx3-ubyte and feedback-labels-idx1-ubyte into --out.",
    )
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="directory for the two files")
    p.add_argument(
        "--feedback-db",
        type=Path,
        metavar="FILE",
        help="the server's SQLite file (default: feedback.sqlite3 in the user data directory)",
    )
    p.set_defaults(run=run_feedback)


def run_feedback(args: argparse.Namespace) -> int:
    from .feedback import FeedbackStore

    store = FeedbackStore(args.feedback_db)
    result = store.export_idx(args.out)
    print(f"wrote {result.count:,} corrected samples from {store.path}:")
    print(f"  {result.images}\n  {result.labels}")
    return EXIT_OK
