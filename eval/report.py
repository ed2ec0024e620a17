"""One self-contained HTML report of a sweep or of one run, assembled from its result files only.

``write_report(DIR)`` asks each kind of report in :data:`REPORT_KINDS` whether ``DIR`` is its kind
of directory: a sweep (``sweep.jsonl`` or ``sweep.toml``, as ``secure-ffm sweep`` writes it) or a
run (``summary.json``, ``metrics.jsonl`` and ``config.toml``, as ``secure-ffm train`` writes it).
Anything else is refused with one :class:`ConfigError` before anything is written.

A sweep's ``report.html`` embeds the plots as base64 PNG (no external file, script, font or style sheet,
so it opens offline and can be mailed), then lists every point (settings, status, utility, ε,
attack metrics, errors), the privacy ledger of every point, recovered sentences for text
audits, and the resolved sweep file; points whose run is continual get their accuracy-matrix heatmap.
A run's report shows its final metrics, training curves, privacy ledger (``privacy.json``) and
config, and for a continual run (``summary.json`` has ``"continual"``, see :mod:`eval.continual`)
the accuracy matrix as a heatmap and a table, each stage's accuracy over the rounds, average
accuracy, forgetting and backward transfer, and the round at which each client whose privacy budget
ran out stopped contributing. It stays readable on a laptop: a table wider than the window
scrolls in its own box, not the page (tests/eval/test_report_browser.py checks it in headless Chromium).
"""

from __future__ import annotations

import base64
import html
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eval.continual import ContinualSummary, continual_of, headline, percent, points, read_json, read_metrics_rows
from eval.results import JSONL, SWEEP_TOML, current_point_ids, latest_rows, read_all_rows, spends_budget, write_text_atomic
from secure_ffm.errors import ConfigError

RUN_FILES = ("summary.json", "metrics.jsonl", "config.toml")
"""The files that make a directory a run directory (``secure_ffm/run/writer.py``; ``summary.json`` is written last)."""

CAPTIONS = {
    "accuracy_vs_epsilon": "Test accuracy of the final global model against the ε spent (log scale); ∞: no differential privacy. "
    "Lines: one per DP mechanism and setting of the other axes; band or whiskers: min-max over seeds.",
    "attack_vs_epsilon": "Success of the leakage audit against ε: higher means the server reconstructs more of a client's data.",
    "privacy_utility_frontier": "Each setting's mean utility against its mean attack success; the ringed points joined by the step line "
    "are the Pareto front: no other setting has both higher accuracy and lower attack success.",
    "reconstructions": "What the honest-but-curious server reconstructs under each setting (first seed).",
    "loss_curves": "Each point's test loss per unit, and its loss on the server's held-out public data where it has some; "
    "shaded: FFM public units, in which the server trains on its public data and no client takes part (docs/ffm.md).",
}
RUN_CAPTIONS = {
    "training_curves": "Test accuracy and macro F1 of the global model per round (left); test and training loss per round, "
    "FFM public units shaded (right).",
    "accuracy_matrix": "A[i][j]: test accuracy on stage j's test set after training stage i (%). Blank above the diagonal: "
    "stages not trained yet. The diagonal is what each stage reached; what lies below it shows what was kept or forgotten.",
    "stage_accuracy": "Each stage's test accuracy over the rounds, from the round it is first seen. Dashed: a new stage begins; "
    "red: the round from which a client, its privacy budget spent, stopped contributing.",
}
STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;color:#222}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
.table{overflow:auto;max-height:85vh;margin:.5em 0}
table{border-collapse:collapse;font-size:.82rem;width:100%}
th,td{border:1px solid #ddd;padding:.25em .45em;text-align:left;vertical-align:top;overflow-wrap:break-word}
th{background:#f4f4f4;position:sticky;top:0} td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.failed td{background:#fff0f0} tr.missing td{color:#999}
figure{margin:1.2em 0} figure img{max-width:100%;height:auto;border:1px solid #eee} figcaption{font-size:.85rem;color:#555}
pre{background:#f7f7f7;padding:.8em;overflow-x:auto;font-size:.8rem} .muted{color:#777} .warning{color:#a00000}
"""


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isinf(value):
            return "∞"
        return f"{value:.{digits}g}"
    if isinstance(value, Mapping):
        return ", ".join(f"{k} {_fmt(v, digits)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(_fmt(v, digits) for v in value)
    return str(value)


def _cell(value: Any, *, numeric: bool = False, digits: int = 4) -> str:
    cls = ' class="n"' if numeric else ""
    return f"<td{cls}>{html.escape(_fmt(value, digits))}</td>"


def _table(header: Sequence[str], body: Sequence[str]) -> str:
    head = "".join(f"<th>{html.escape(h).replace('_', '_<wbr>')}</th>" for h in header)  # metric names wrap at their underscores
    # in its own scrolling box: a sweep with many axes and metrics scrolls its table, not the page (the header stays in view)
    return f"<div class='table'><table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"


def _epsilon(row: Mapping[str, Any]) -> Any:
    if row.get("status") == "ok" and not spends_budget(row):
        return math.inf
    return row.get("epsilon")


def _note(row: Mapping[str, Any]) -> str | None:
    """The point's error, else the audit's note; says so when the attack's time budget cut it short (it then understates the leakage)."""
    if row.get("error"):
        return str(row["error"])
    notes = [str(row["attack_note"])] if row.get("attack_note") else []
    if row.get("attack_stopped_by") == "time":
        notes.append(
            f"attack stopped by its time budget after {row.get('attack_iterations')} iterations: the result understates the leakage"
        )
    return "; ".join(notes) or None


def _points_table(rows: Sequence[Mapping[str, Any]], missing: Sequence[str]) -> str:
    axes: dict[str, None] = {}
    metrics: dict[str, None] = {}
    for row in rows:
        axes.update(dict.fromkeys(row.get("settings", {})))
        metrics.update(dict.fromkeys(row.get("attack_metrics") or {}))
    header = [
        "point",
        *axes,
        "seed",
        "protection",
        "status",
        "accuracy",
        "macro F1",
        "ε",
        "δ",
        *(f"attack {m}" for m in metrics),
        "seconds",
        "error / note",
    ]
    body = []
    for row in rows:
        cells = [_cell(row["point_id"]), *(_cell((row.get("settings") or {}).get(a)) for a in axes), _cell(row.get("seed"))]
        cells += [_cell(row.get("protection")), _cell(row.get("status"))]
        cells += [
            _cell(row.get("accuracy"), numeric=True),
            _cell(row.get("macro_f1"), numeric=True),
            _cell(_epsilon(row), numeric=True, digits=3),
        ]
        cells += [_cell(row.get("delta"), numeric=True, digits=3)]
        cells += [_cell((row.get("attack_metrics") or {}).get(m), numeric=True) for m in metrics]
        cells += [_cell(row.get("seconds"), numeric=True, digits=3), _cell(_note(row))]
        body.append(f'<tr class="{html.escape(str(row.get("status")))}">{"".join(cells)}</tr>')
    status_column = header.index("status")
    for point_id in missing:
        cells = ["<td></td>"] * len(header)
        cells[0], cells[status_column] = f"<td>{html.escape(point_id)}</td>", "<td>not run yet</td>"
        body.append(f'<tr class="missing">{"".join(cells)}</tr>')
    return _table(header, body)


def _ledger_table(rows: Sequence[Mapping[str, Any]], *, first: str = "point") -> str:
    header = [
        first,
        "mechanism",
        "level",
        "accountant",
        "target ε",
        "ε spent",
        "δ",
        "noise multiplier z",
        "sampling rate",
        "clip norm",
        "rounds",
        "noise source",
    ]
    body = []
    reproducible = []
    for row in rows:
        if row.get("status") != "ok":
            continue
        p = row.get("privacy") or {}
        spread = p.get("epsilon_spread")
        spent = _fmt(_epsilon(row), 4) + (
            f" (clients: min {_fmt(spread.get('min'))}, median {_fmt(spread.get('median'))})" if spread else ""
        )
        noise = row.get("noise_multiplier")
        noise_text = _fmt(noise) + (f" (max {_fmt(p['noise_multiplier_spread']['max'])})" if p.get("noise_multiplier_spread") else "")
        clip = p.get("max_grad_norm", p.get("clip_norm"))
        cells = [
            _cell(row["point_id"]), _cell(row.get("mechanism")), _cell(p.get("level")), _cell(row.get("accountant")),
            _cell(p.get("target_epsilon"), numeric=True), f'<td class="n">{html.escape(spent)}</td>',
            _cell(row.get("delta"), numeric=True, digits=3), f'<td class="n">{html.escape(noise_text)}</td>',
            _cell(p.get("sample_rate"), numeric=True, digits=3), _cell(clip, numeric=True), _cell(p.get("rounds"), numeric=True),
            _noise_source_cell(p.get("noise")),
        ]  # fmt: skip
        if (p.get("noise") or {}).get("source") == "seed":
            reproducible.append(str(row["point_id"]))
        body.append(f"<tr>{''.join(cells)}</tr>")
    note = (
        "<p class='muted'>DP-SGD is accounted per client: ε and δ are the largest over the clients that trained (the guarantee every "
        "client has), z the smallest noise multiplier. DP-FedAvg is accounted once for the federation (user-level). "
        "Without differential privacy ε = ∞. Noise source: each party's secret drawn from the OS CSPRNG (the server cannot "
        "recompute the noise), or run.seed when a run opted into reproducible noise.</p>"
    )
    if reproducible:
        note = (
            "<p class='warning'><strong>Reproducible noise</strong> (privacy.reproducible_noise) in "
            f"{html.escape(', '.join(reproducible))}: "
            "its noise and sampling derive from run.seed, which config.toml publishes. Its ε gives no protection against anyone "
            "who knows the seed; use it for research reproducibility only.</p>" + note
        )
    return _table(header, body) + note


def _noise_source_cell(noise: Mapping[str, Any] | None) -> str:
    if not noise:
        return "<td></td>"
    if noise.get("source") == "seed":
        return "<td class='warning'>run.seed: no protection against anyone who knows the seed</td>"
    sampler = "AES-CTR, 4-Gaussian sum" if noise.get("secure_sampler") else "Philox"
    return f"<td>secret per party (OS CSPRNG; {sampler})</td>"


def _texts_table(rows: Sequence[Mapping[str, Any]]) -> str:
    body = []
    for row in rows:
        for i, sample in enumerate(row.get("texts") or []):
            body.append(
                f"<tr>{_cell(row['point_id'] if i == 0 else '')}{_cell(row.get('protection') if i == 0 else '')}"
                f"{_cell(sample.get('original'))}{_cell(sample.get('recovered'))}"
                f"{_cell(sample.get('token_f1'), numeric=True, digits=3)}</tr>"
            )
    return _table(["point", "protection", "original", "recovered", "token F1"], body) if body else ""


def _image(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _figure_html(name: str, png: Path, caption: str) -> str:
    return f"<figure id='{html.escape(name)}'>{_image(png, name)}<figcaption>{html.escape(caption)}</figcaption></figure>"


# --------------------------------------------------------------------------- which report


@dataclass(frozen=True)
class ReportKind:
    """A kind of directory a report can be written for: how to recognise it and how to write its report."""

    name: str
    recognises: Callable[[Path], bool]
    write: Callable[[Path, str], Path]


def is_sweep_dir(directory: Path) -> bool:
    """A directory ``secure-ffm sweep`` wrote (its rows or its resolved sweep file)."""
    return directory.is_dir() and ((directory / JSONL).is_file() or (directory / SWEEP_TOML).is_file())


def is_run_dir(directory: Path) -> bool:
    """A directory of a finished ``secure-ffm train`` run (:data:`RUN_FILES`)."""
    return directory.is_dir() and all((directory / name).is_file() for name in RUN_FILES)


def write_report(directory: str | Path, *, examples: str = "auto") -> Path:
    """Write ``DIR/plots/*.png|svg`` and ``DIR/report.html`` for a sweep or a run directory; returns the report's path.

    ``examples`` (:data:`EXAMPLE_POLICIES`): whether a sweep report shows the audit's original and reconstructed examples.
    Anything else raises :class:`ConfigError` (the CLI: one line, exit 2) and nothing is written.
    """
    if examples not in EXAMPLE_POLICIES:
        raise ConfigError("--examples", f"unknown value {examples!r}", f"choose one of: {', '.join(EXAMPLE_POLICIES)}")
    directory = Path(directory)
    for kind in REPORT_KINDS:
        if kind.recognises(directory):
            return kind.write(directory, examples)
    present = [name for name in RUN_FILES if (directory / name).is_file()]
    if present:
        lacking = ", ".join(name for name in RUN_FILES if name not in present)
        problem = f"{directory} is not a sweep directory, and as a run directory it lacks {lacking}"
        fix = "a run writes summary.json when it finishes: finish it with `secure-ffm train CONFIG --out DIR --resume`"
    else:
        state = "" if directory.is_dir() else " (it does not exist)" if not directory.exists() else " (it is a file)"
        problem = f"{directory} is not a sweep directory (no sweep.jsonl) nor a run directory (no {', '.join(RUN_FILES)}){state}"
        fix = "pass the --out directory of `secure-ffm sweep` or of `secure-ffm train`"
    raise ConfigError("DIR", problem, fix)


# --------------------------------------------------------------------------- the audit's examples

EXAMPLE_POLICIES = ("auto", "show", "redact")
"""Whether a sweep report shows the audit's examples (``secure-ffm report --examples``): the originals are clients' training
records, and a reconstruction that succeeds is one too, so a report made for a paper or a data-protection officer would
publish them. ``auto`` (default) shows them when every point trains on a public built-in dataset and redacts them
otherwise; ``show`` and ``redact`` decide outright."""


def private_datasets(sweep_dir: Path, rows: Sequence[Mapping[str, Any]]) -> list[str] | None:
    """The points' ``data.dataset`` values (the resolved sweep file's base, or a point's own override) that are not public
    built-ins; None when the sweep file is missing or unreadable (which data the points saw is unknown)."""
    import tomllib

    from secure_ffm.config import DataConfig
    from secure_ffm.data.builtin import DATASETS

    try:
        raw = tomllib.loads((sweep_dir / SWEEP_TOML).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError):
        return None
    base_config = raw.get("base", {}) if isinstance(raw.get("base"), Mapping) else {}
    base = base_config.get("data", {})
    default = base.get("dataset", DataConfig.dataset) if isinstance(base, Mapping) else DataConfig.dataset
    found = {str(default), *_stage_datasets(base_config)}
    for row in rows:
        config = row.get("config")
        if isinstance(config, Mapping) and "data.dataset" in config:
            found.add(str(config["data.dataset"]))
    # what each point actually ran: its resolved config (a continual stage's own dataset was missed until 2026-12-07,
    # and the report showed a private file's examples under --examples auto)
    for path in sorted((sweep_dir / "points").glob("*/run/config.toml")):
        try:
            point = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError):
            return None
        data = point.get("data", {})
        found.add(str(data.get("dataset", DataConfig.dataset)) if isinstance(data, Mapping) else DataConfig.dataset)
        found.update(_stage_datasets(point))
    return sorted(d for d in found if d not in DATASETS)


def _stage_datasets(config: Mapping[str, Any]) -> set[str]:
    """The datasets a config's continual stages federate (``[[continual.stages]]``'s ``dataset``)."""
    continual = config.get("continual", {})
    stages = continual.get("stages", []) if isinstance(continual, Mapping) else []
    return {str(s["dataset"]) for s in stages if isinstance(s, Mapping) and s.get("dataset")}


def examples_redacted(private: Sequence[str] | None, examples: str) -> str | None:
    """Why the report leaves the audit's examples out (None: it shows them), by :data:`EXAMPLE_POLICIES`; ``private``:
    :func:`private_datasets`."""
    if examples == "show":
        return None
    if examples == "redact":
        return "examples redacted (--examples redact)"
    if private is None:
        return f"examples redacted: no readable {SWEEP_TOML} says which data the points trained on"
    if private:
        return f"examples redacted: {', '.join(private)} is not a public built-in dataset"
    return None


def _examples_note(reason: str | None, shown_private: Sequence[str]) -> str:
    if reason is not None:
        return (
            f"<p class='warning'>The audit's original and reconstructed examples are left out of this report ({html.escape(reason)}): "
            "the originals are clients' training records, and a reconstruction that succeeds is one too. The metrics above and "
            "below still say how much leaked. <code>secure-ffm report DIR --examples show</code> includes them, for readers "
            "allowed to see the data.</p>"
        )
    if shown_private:
        return (
            "<p class='warning'>This report shows clients' training records (the audit's originals and reconstructions) from "
            f"{html.escape(', '.join(shown_private))}: share it only with readers allowed to see that data "
            "(<code>--examples redact</code> leaves them out).</p>"
        )
    return ""


# --------------------------------------------------------------------------- sweep report


def _continual_points(sweep_dir: Path, rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, ContinualSummary]]:
    """``(point id, continual summary)`` of every finished point whose run is continual, each checked (a malformed one
    raises before anything is written)."""
    found = []
    for row in rows:
        if row.get("status") != "ok":
            continue
        run_dir = sweep_dir / str(row.get("run_dir") or f"points/{row['point_id']}/run")
        path = run_dir / "summary.json"
        if path.is_file():
            summary = read_json(path, key="DIR")
            continual = continual_of(summary, where=str(path)) if isinstance(summary, Mapping) else None
            if continual is not None:
                found.append((str(row["point_id"]), continual))
    return found


def _continual_points_html(sweep_dir: Path, found: Sequence[tuple[str, ContinualSummary]]) -> list[str]:
    from eval.plots import accuracy_matrix_heatmap

    body = []
    figures = []
    for point_id, continual in found:
        spent = "; ".join(entry.line for entry in continual.budget_exhausted) or "none"
        body.append(
            f"<tr>{_cell(point_id)}{_cell(continual.method)}{_cell(len(continual.stages), numeric=True)}"
            f"{_cell(percent(continual.average_accuracy), numeric=True)}{_cell(points(continual.forgetting), numeric=True)}"
            f"{_cell(points(continual.backward_transfer), numeric=True)}{_cell(spent)}</tr>"
        )
        png, _svg = accuracy_matrix_heatmap(continual, sweep_dir / "plots" / f"accuracy_matrix__{point_id}")
        figures.append(_figure_html(f"accuracy_matrix__{point_id}", png, f"{point_id}: {RUN_CAPTIONS['accuracy_matrix']}"))
    header = ["point", "method", "stages", "average accuracy", "forgetting", "backward transfer", "privacy budget spent"]
    return ["<h2>Continual learning</h2>", _continual_note(), _table(header, body), *figures]


def write_sweep_report(sweep_dir: Path, examples: str = "auto") -> Path:
    """Write ``SWEEP_DIR/plots/*.png|svg`` and ``SWEEP_DIR/report.html``; returns the report's path. ``examples``: whether
    the audit's examples appear (:data:`EXAMPLE_POLICIES`)."""
    from eval.plots import write_plots

    ids = current_point_ids(sweep_dir)
    rows = latest_rows(read_all_rows(sweep_dir), ids)
    missing = [p for p in (ids or []) if p not in {r["point_id"] for r in rows}]
    continual = _continual_points(sweep_dir, rows)
    private = private_datasets(sweep_dir, rows)
    redacted = examples_redacted(private, examples)
    plots = write_plots(sweep_dir, rows=rows, redacted=redacted)
    name = next((r.get("sweep") for r in rows if r.get("sweep")), sweep_dir.name)
    ok = sum(r.get("status") == "ok" for r in rows)
    failed = sum(r.get("status") == "failed" for r in rows)
    settings_text = (sweep_dir / SWEEP_TOML).read_text(encoding="utf-8") if (sweep_dir / SWEEP_TOML).is_file() else "(no sweep.toml)"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>secure-ffm sweep report: {html.escape(str(name))}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>Privacy-utility sweep: {html.escape(str(name))}</h1>",
        f"<p class='muted'>{len(rows) + len(missing)} points: {ok} finished, {failed} failed, {len(missing)} not run yet. "
        f"Generated {html.escape(time.strftime('%Y-%m-%d %H:%M'))} from {html.escape(str(sweep_dir))}/sweep.jsonl.</p>",
        "<h2>Plots</h2>",
    ]
    parts.append(_examples_note(redacted, (["(unknown)"] if private is None else private) if examples == "show" else []))
    for plot, (png, _svg) in plots.items():
        parts.append(_figure_html(plot, png, CAPTIONS.get(plot, plot)))
    if continual:
        parts += _continual_points_html(sweep_dir, continual)
    texts = _texts_table(rows) if redacted is None else ""
    if texts:
        parts += ["<h2>Recovered sentences</h2>", texts]
    parts += ["<h2>Points</h2>", _points_table(rows, missing)]
    return _finish_page(
        sweep_dir / "report.html",
        parts,
        ledger=[_ledger_table(rows)],
        settings=("resolved sweep file", settings_text),
        private=redacted is None,  # it embeds the audit's examples
    )


# --------------------------------------------------------------------------- run report


def _continual_note() -> str:
    return (
        "<p class='muted'>A[i][j] is the test accuracy on stage j's test set after training stage i. Average accuracy: the mean of "
        "the last row. Forgetting: the mean, over the earlier stages, of the drop from their best accuracy to the final one "
        "(lower is better). Backward transfer: the mean, over the earlier stages, of the final accuracy minus the accuracy just "
        "after learning them (negative: forgotten). Differences in percentage points (pp).</p>"
    )


def _pair(summary: Mapping[str, Any], first: str, second: str) -> str | None:
    """``"a / b"`` of two summary values; None when the summary has neither."""
    if summary.get(first) is None and summary.get(second) is None:
        return None
    return f"{_fmt(summary.get(first))} / {_fmt(summary.get(second))}"


def _summary_table(summary: Mapping[str, Any]) -> str:
    final = summary.get("final") or {}
    model = summary.get("model") or {}
    entries: list[tuple[str, Any, bool]] = [
        ("final round", final.get("round"), True),
        *((key.replace("_", " "), value, True) for key, value in final.items() if key.startswith("test_")),
        ("train loss", final.get("train_loss"), True),
        ("best test accuracy", summary.get("best_test_accuracy"), True),
        ("dataset", summary.get("dataset"), False),
        ("model", " / ".join(str(model[k]) for k in ("arch", "finetune", "objective") if model.get(k)), False),
        ("strategy", summary.get("strategy"), False),
        ("clients", summary.get("num_clients"), True),
        ("partition", summary.get("partition"), False),
        ("training / test examples", _pair(summary, "num_train_examples", "num_test_examples"), False),
        ("parameters sent per update", summary.get("update_parameters"), True),
        ("bytes up / down (total)", _pair(summary, "bytes_up_total", "bytes_down_total"), False),
        ("seconds (rounds)", summary.get("seconds_total"), True),
        ("client accuracy (final model on each client's data)", summary.get("client_accuracy"), False),
    ]
    body = [f"<tr>{_cell(name)}{_cell(value, numeric=numeric)}</tr>" for name, value, numeric in entries if value not in (None, "", {})]
    return _table(["metric", "value"], body)


def _run_ledger(name: str, summary: Mapping[str, Any], ledger: Mapping[str, Any] | None) -> list[str]:
    from eval.sweep import privacy_columns

    mode = str((summary.get("privacy") or {}).get("mechanism") or (ledger or {}).get("mechanism") or "none")
    if ledger is None:
        return [f"<p class='muted'>No privacy.json: privacy.mode = {html.escape(mode)}, no differential privacy (ε = ∞).</p>"]
    try:
        columns = privacy_columns(mode, ledger)
    except ConfigError:  # a plugin's mechanism that is not installed here: show what the ledger says
        columns = {"epsilon": None, "privacy": {"mechanism": mode, "accountant": ledger.get("accountant")}}
    parts = [_ledger_table([{"point_id": name, "status": "ok", "mechanism": mode, **columns}], first="run")]
    clients = [c for c in ledger.get("clients") or [] if isinstance(c, Mapping)]
    if clients:
        header = ["client", "ε spent", "δ", "noise multiplier z", "sampling rate", "steps", "rounds trained"]
        body = [
            f"<tr>{_cell(c.get('client'))}{_cell(c.get('epsilon'), numeric=True)}{_cell(c.get('delta'), numeric=True, digits=3)}"
            f"{_cell(c.get('noise_multiplier'), numeric=True)}{_cell(c.get('sample_rate'), numeric=True, digits=3)}"
            f"{_cell(c.get('steps'), numeric=True)}{_cell(c.get('rounds'), numeric=True)}</tr>"
            for c in clients
        ]
        parts += ["<h3>Per client (DP-SGD: each client's own ledger, over the whole run)</h3>", _table(header, body)]
    return parts


def _matrix_table(continual: ContinualSummary) -> str:
    header = ["after stage", *continual.names]
    body = []
    for i, name in enumerate(continual.names):
        cells = [_cell(f"{i}: {name}")]
        for j in range(len(continual.names)):
            value = continual.accuracy(i, j)
            cells.append(_cell("" if value is None else percent(value), numeric=True))  # blank above the diagonal
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f"<div id='accuracy-matrix'>{_table(header, body)}</div>"


def _stages_table(continual: ContinualSummary) -> str:
    header = ["stage", "dataset", "classes", "rounds", "training examples", "test examples"]
    body = []
    for stage in continual.stages:
        span = f"{stage.first_round}-{stage.last_round}" if stage.first_round is not None and stage.last_round is not None else stage.rounds
        body.append(
            f"<tr>{_cell(f'{stage.index}: {stage.name}')}{_cell(stage.dataset)}{_cell(stage.classes or 'all')}{_cell(span, numeric=True)}"
            f"{_cell(stage.train_examples, numeric=True)}{_cell(stage.test_examples, numeric=True)}</tr>"
        )
    return _table(header, body)


def _continual_html(continual: ContinualSummary, figures: Mapping[str, Path]) -> list[str]:
    if continual.budget_exhausted:
        budget = "<ul class='budget'>" + "".join(f"<li>{html.escape(e.line)}</li>" for e in continual.budget_exhausted) + "</ul>"
    else:
        budget = "<p class='budget'>No client's privacy budget ran out: every client could contribute in every stage.</p>"
    return [
        "<h2>Continual learning</h2>",
        f"<p><strong>{html.escape(headline(continual))}</strong> over {len(continual.stages)} stages.</p>",
        _continual_note(),
        "<h3>Privacy budget across the stages</h3>",
        budget,
        *(_figure_html(name, png, RUN_CAPTIONS[name]) for name, png in figures.items()),
        "<h3>Accuracy matrix (%)</h3>",
        _matrix_table(continual),
        "<h3>Stages</h3>",
        _stages_table(continual),
    ]


def write_run_report(run_dir: Path, examples: str = "auto") -> Path:
    """Write ``RUN_DIR/plots/*.png|svg`` and ``RUN_DIR/report.html`` for one run; returns the report's path (a run report
    holds no audit examples, so ``examples`` changes nothing).

    Every file is read and checked first (a malformed ``summary.json`` or continual document raises
    :class:`ConfigError`), then the plots and the page are written.
    """
    from eval.plots import accuracy_matrix_heatmap, run_curves, stage_accuracy_over_rounds

    summary = read_json(run_dir / "summary.json", key="DIR")
    if not isinstance(summary, Mapping):
        raise ConfigError("DIR", f"{run_dir / 'summary.json'} is not a JSON object", "pass a directory written by `secure-ffm train`")
    ledger_path = run_dir / "privacy.json"
    ledger = read_json(ledger_path, key="DIR") if ledger_path.is_file() else None
    continual = continual_of(summary, where=str(run_dir / "summary.json"))
    history = read_metrics_rows(run_dir / "metrics.jsonl")
    config_text = (run_dir / "config.toml").read_text(encoding="utf-8")
    name = str(summary.get("name") or run_dir.name)

    plots = run_dir / "plots"
    figures = {"training_curves": run_curves(history, plots / "training_curves", title=f"Training curves: {name}")[0]}
    continual_figures = {}
    if continual is not None:
        continual_figures["accuracy_matrix"] = accuracy_matrix_heatmap(continual, plots / "accuracy_matrix")[0]
        continual_figures["stage_accuracy"] = stage_accuracy_over_rounds(history, continual, plots / "stage_accuracy")[0]
    kind = "Continual-learning run" if continual is not None else "Run"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>secure-ffm run report: {html.escape(name)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>{kind}: {html.escape(name)}</h1>",
        f"<p class='muted'>{len(history)} rounds recorded. Generated {html.escape(time.strftime('%Y-%m-%d %H:%M'))} "
        f"from {html.escape(str(run_dir))}.</p>",
        "<h2>Final metrics</h2>",
        _summary_table(summary),
        *(_figure_html(n, png, RUN_CAPTIONS[n]) for n, png in figures.items()),
    ]
    if continual is not None:
        parts += _continual_html(continual, continual_figures)
    return _finish_page(run_dir / "report.html", parts, ledger=_run_ledger(name, summary, ledger), settings=("config.toml", config_text))


def _finish_page(path: Path, parts: list[str], *, ledger: Sequence[str], settings: tuple[str, str], private: bool = False) -> Path:
    """Close a report with its privacy ledger and its settings, and write it atomically to ``path`` (``private``:
    owner-only, for a report that shows clients' examples)."""
    title, text = settings
    parts = [
        *parts,
        "<h2>Privacy ledger</h2>",
        *ledger,
        f"<h2>Settings ({title})</h2>",
        f"<pre>{html.escape(text)}</pre>",
        "</body></html>",
    ]
    write_text_atomic(path, "\n".join(parts) + "\n", private=private)
    return path


REPORT_KINDS: tuple[ReportKind, ...] = (
    ReportKind("sweep", is_sweep_dir, write_sweep_report),
    ReportKind("run", is_run_dir, write_run_report),
)
"""The kinds of directory ``secure-ffm report`` takes, asked in order."""
