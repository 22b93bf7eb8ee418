"""Compare windows, triggers and watermarks on one recorded stream.

Run the default grid on the embedded phishing dataset:

    python -m pipelines.windowing_lab

Each setting replays the same stream through Beam's TestStream on the
streaming DirectRunner, one pipeline per setting. The lab measures the
panes: counts by timing, result latency, on-time completeness, late and
lost events, duplicates, and the prequential accuracy of a model trained
on the panes. Outputs under ``--output_dir``: ``results.csv``,
``results.parquet``, PNG plots and ``report.md``.

Give a grid as flags, each taking one or more values whose product is run
(``--window fixed:30m sliding:1h/15m --trigger watermark count:10``), or as
a YAML or JSON file with ``--grid`` (see ``transforms/windowing_lab/grid.py``).
"""

import argparse
import logging
import os
from typing import List, Optional

from pipelines import common
from transforms import sources
from transforms.windowing_lab import grid as grid_lib
from transforms.windowing_lab import lab
from transforms.windowing_lab import report

_LOGGER = logging.getLogger(__name__)

DEFAULT_OUTPUT_DIR = os.path.join("output", "windowing_lab")

# Flags that each take a list of values; the grid is their product.
GRID_FLAGS = {
    "window": "Windows: 'fixed:<size>', 'sliding:<size>/<period>' or 'session:<gap>'.",
    "trigger": (
        "Triggers: 'watermark', optionally with '+early=<firing>' and"
        " '+late=count:<n>', or a repeated '<firing>' alone; a firing is"
        " 'count:<elements>' or 'time:<whole seconds of processing time>'."),
    "allowed_lateness": "Allowed lateness, a duration such as '0s' or '30m'.",
    "accumulation": "Accumulation modes: 'discarding' or 'accumulating'.",
    "max_out_of_orderness": "Seconds (or a duration) the watermark trails the largest event time.",
    "disorder_fraction": "Fractions of events delivered later than their position.",
    "max_disorder": "Largest delay of a disordered event, in seconds or a duration.",
    "late_fraction": "Fractions of events held back until the watermark has passed them.",
    "late_delay": "How far, in seconds or a duration, the watermark has passed a late event.",
    "records_per_watermark_update": "Arrivals between two watermark updates (default 1).",
}
_NUMERIC_FLAGS = {"disorder_fraction": float, "late_fraction": float, "records_per_watermark_update": int}


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sources.add_source_options(parser)

    group = parser.add_argument_group("grid")
    group.add_argument(
        "--grid", default=None,
        help="YAML or JSON grid file. Without it and without grid flags, the default grid runs.")
    for flag, help_text in GRID_FLAGS.items():
        group.add_argument(
            f"--{flag}", nargs="+", default=None, type=_NUMERIC_FLAGS.get(flag, str),
            help=help_text)

    group = parser.add_argument_group("model")
    group.add_argument(
        "--train", action=argparse.BooleanOptionalAction, default=True,
        help=(
            "Train a model on each setting's panes and report its prequential"
            " accuracy. Default: on."))
    group.add_argument(
        "--hidden", default="32", help="Hidden layer widths, comma-separated. Default: 32.")
    group.add_argument(
        "--learning_rate", type=float, default=1e-2, help="Adam learning rate. Default: 0.01.")
    group.add_argument(
        "--steps_per_pane", type=int, default=1,
        help="Training passes over each pane. Default: 1.")
    group.add_argument(
        "--batch_size", type=int, default=64, help="Mini-batch size within a pass. Default: 64.")

    parser.add_argument(
        "--output_dir", default=DEFAULT_OUTPUT_DIR,
        help=(
            "Directory for results.csv, results.parquet, the plots and report.md."
            f" Default: {DEFAULT_OUTPUT_DIR}."))
    return parser


def choose_settings(args: argparse.Namespace, spacing: float) -> List[grid_lib.LabSetting]:
    """Return the grid from ``--grid``, from the grid flags, or the default."""
    flag_values = {flag: getattr(args, flag) for flag in GRID_FLAGS}
    flags_given = sorted(flag for flag, values in flag_values.items() if values)
    if args.grid and flags_given:
        raise ValueError(
            f"--grid {args.grid} and --{flags_given[0]} both define the grid: put"
            " every value in the grid file, or drop --grid.")
    if args.grid:
        return grid_lib.read_grid(args.grid)

    settings = grid_lib.settings_from_values(flag_values)
    return settings or grid_lib.default_grid(spacing)


def _training_options(args: argparse.Namespace) -> Optional[lab.TrainingOptions]:
    if not args.train:
        return None
    try:
        hidden = tuple(int(width) for width in args.hidden.split(",") if width.strip())
    except ValueError:
        raise ValueError(
            f"Invalid --hidden {args.hidden!r}: expected comma-separated widths,"
            " for example --hidden=64,32.") from None
    return lab.TrainingOptions(
        hidden=hidden,
        learning_rate=args.learning_rate,
        steps_per_pane=args.steps_per_pane,
        batch_size=args.batch_size)


def run(argv: Optional[List[str]] = None) -> str:
    """Run the lab with command-line ``argv``; return the printed table."""
    args = build_parser().parse_args(argv)
    source_config = sources.source_config_from_args(args)
    training = _training_options(args)

    stream = lab.load_stream(source_config)
    settings = choose_settings(args, stream.spacing)
    _LOGGER.info("Running %d settings on %s.", len(settings), stream.name)

    results = lab.run_grid(stream, settings, seed=args.seed, training=training)
    table = report.write_outputs(results, stream, args.seed, args.output_dir)

    text = report.format_table(table)
    print(text)
    print(f"\nWrote {os.path.join(args.output_dir, report.REPORT_FILE)}")
    return text


def main() -> None:
    # The lab reports Beam's stalls and relabelled panes itself; Beam's own
    # warnings about them would repeat once per pane.
    common.run_main(run, "%(levelname)s %(name)s: %(message)s", apache_beam_level=logging.ERROR)


if __name__ == "__main__":
    main()
