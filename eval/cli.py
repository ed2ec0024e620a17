"""``secure-ffm sweep`` and ``secure-ffm report``.

    secure-ffm sweep SWEEP.toml [--out DIR] [--report [--examples auto|show|redact]] [--dry-run] [--quiet]
    secure-ffm report DIR [--examples auto|show|redact]

``sweep`` validates the whole sweep file first (bad input: one line, exit 2, nothing
written), then trains and audits every point not finished yet, appending to
``DIR/sweep.jsonl`` and rewriting ``DIR/sweep.csv``; it exits 1 when a point failed (the
others still ran; a re-run retries the failed ones); with ``--report`` it then writes the
report as ``secure-ffm report DIR`` does and prints its path last. ``report`` writes ``DIR/plots/`` and
``DIR/report.html`` from a sweep directory's files, or from one run directory's (``secure-ffm train --out``:
final metrics, privacy ledger, and for a continual run the accuracy matrix, per-stage accuracy and the
clients whose budget ran out), and prints the report's path; any other directory: one line, exit 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from secure_ffm.run.cli import command
from secure_ffm.startup import collector_paused

EXAMPLES = ("auto", "show", "redact")
"""``--examples`` choices: eval.report.EXAMPLE_POLICIES, written out here so that ``--help`` imports no plotting."""
EXAMPLES_HELP = (
    "the audit's original and reconstructed examples in the report (clients' training records): auto (default) shows them "
    "when every point trains on a public built-in dataset, else leaves them out; show; redact"
)


def configure_sweep(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sweep", help="sweep file, e.g. configs/sweep_tiny.toml")
    parser.add_argument("--out", help="sweep directory (default: runs/sweep-<sweep.name>); an earlier sweep's directory resumes it")
    parser.add_argument(
        "--report", action="store_true", help="write DIR/report.html and the plots when the points are done (as `secure-ffm report DIR`)"
    )
    parser.add_argument("--examples", choices=EXAMPLES, default="auto", help="with --report: " + EXAMPLES_HELP)
    parser.add_argument("--dry-run", action="store_true", help="validate the sweep and list its points, run nothing")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def configure_report(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "directory", metavar="DIR", help="a sweep directory (`secure-ffm sweep --out`) or a run directory (`secure-ffm train --out`)"
    )
    parser.add_argument("--examples", choices=EXAMPLES, default="auto", help=EXAMPLES_HELP)


@command("sweep", help="train and audit a grid of privacy settings, writing sweep.jsonl/sweep.csv", configure=configure_sweep)
def sweep_command(args: argparse.Namespace) -> int:
    with collector_paused():  # secure_ffm.startup
        from eval.spec import load_sweep
        from eval.sweep import run_sweep

    spec = load_sweep(args.sweep)  # every point validated here: a bad setting exits 2 before anything is written
    out_dir = Path(args.out) if args.out else Path("runs") / f"sweep-{spec.name}"
    if args.dry_run:
        for point in spec.points:
            print(f"{point.id}\t{' '.join(point.overrides)}")
        print(f"{len(spec.points)} points; results would go to {out_dir}")
        return 0
    try:
        summary = run_sweep(spec, out_dir, quiet=args.quiet)
    except KeyboardInterrupt:
        print(f"interrupted; run the same command again to resume (finished points are kept in {out_dir})", file=sys.stderr)
        return 130
    print(f"{spec.name}: {summary.total} points: {len(summary.ran)} ran, {len(summary.skipped)} already done, {len(summary.failed)} failed")
    print(f"results: {summary.csv_path}")
    if summary.failed:
        for row in summary.rows:
            if row.get("status") == "failed":
                print(f"failed: {row['point_id']}: {row.get('error')}", file=sys.stderr)
    if args.report:
        from eval.report import write_report

        print(f"report: {write_report(out_dir, examples=args.examples)}")  # failed points are listed in it, so write it either way
    else:
        print(f"report: secure-ffm report {out_dir}")
    return 1 if summary.failed else 0


@command("report", help="plots and a self-contained report.html from a sweep or a run directory", configure=configure_report)
def report_command(args: argparse.Namespace) -> int:
    from eval.report import write_report

    print(write_report(args.directory, examples=args.examples))
    return 0
