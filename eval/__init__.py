"""Privacy-utility evaluation: sweeps that write CSV/JSONL, plots that only read those files, reports.

``eval.spec`` reads and validates a sweep file and expands its grid into points;
``eval.sweep`` trains, audits and records each point (resumably); ``eval.results``
reads the result files; ``eval.plots`` and ``eval.report`` turn them into figures and
one self-contained HTML page (of a sweep, or of one run directory); ``eval.continual`` reads
and checks a continual run's accuracy matrix and budget record; ``eval.metrics`` gathers the metric functions.
``eval.cli`` registers the ``secure-ffm sweep`` and ``secure-ffm report`` commands.
"""

from eval.report import write_report
from eval.spec import SweepPoint, SweepSpec, load_sweep
from eval.sweep import SweepSummary, run_sweep

__all__ = ["SweepPoint", "SweepSpec", "SweepSummary", "load_sweep", "run_sweep", "write_report"]
