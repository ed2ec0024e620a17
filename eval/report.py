"""One self-contained HTML report of a sweep, assembled from its result files only.

``report.html`` embeds the plots as base64 PNG (no external file, script, font or style sheet,
so it opens offline and can be mailed), then lists every point (settings, status, utility, ε,
attack metrics, errors), the privacy ledger of every point, recovered sentences for text
audits, and the resolved sweep file. It stays readable on a laptop: a table wider than the window
scrolls in its own box, not the page (tests/eval/test_report_browser.py checks it in headless Chromium).
"""

from __future__ import annotations

import base64
import html
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from eval.results import JSONL, SWEEP_TOML, current_point_ids, latest_rows, read_all_rows, spends_budget, write_text_atomic
from secure_ffm.errors import ConfigError

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


def _ledger_table(rows: Sequence[Mapping[str, Any]]) -> str:
    header = [
        "point",
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


def write_report(sweep_dir: str | Path) -> Path:
    """Write ``SWEEP_DIR/plots/*.png|svg`` and ``SWEEP_DIR/report.html``; returns the report's path."""
    from eval.plots import write_plots

    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir() or not ((sweep_dir / JSONL).is_file() or (sweep_dir / SWEEP_TOML).is_file()):
        raise ConfigError(
            "SWEEP_DIR", f"{sweep_dir} is not a sweep directory (no sweep.jsonl)", "pass the --out directory of `secure-ffm sweep`"
        )
    ids = current_point_ids(sweep_dir)
    rows = latest_rows(read_all_rows(sweep_dir), ids)
    missing = [p for p in (ids or []) if p not in {r["point_id"] for r in rows}]
    plots = write_plots(sweep_dir, rows=rows)
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
    for plot, (png, _svg) in plots.items():
        parts.append(f"<figure id='{plot}'>{_image(png, plot)}<figcaption>{html.escape(CAPTIONS.get(plot, plot))}</figcaption></figure>")
    texts = _texts_table(rows)
    if texts:
        parts += ["<h2>Recovered sentences</h2>", texts]
    parts += [
        "<h2>Points</h2>",
        _points_table(rows, missing),
        "<h2>Privacy ledger</h2>",
        _ledger_table(rows),
        "<h2>Settings (resolved sweep file)</h2>",
        f"<pre>{html.escape(settings_text)}</pre>",
        "</body></html>",
    ]
    path = sweep_dir / "report.html"
    write_text_atomic(path, "\n".join(parts) + "\n")
    return path
