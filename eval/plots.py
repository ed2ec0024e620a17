"""Plots of a sweep, drawn only from its result files (``sweep.jsonl`` and the per-point reconstructions).

- ``accuracy_vs_epsilon``: test accuracy against the privacy budget ε (each setting's target; the
  accountant keeps the ε spent, listed in the report, at or below it), one line per DP mechanism and
  setting of the other axes, the mean over seeds with a min-max band; ε on a log axis and runs
  without DP (ε = ∞) at a separate position right of a broken axis. Lines are dodged a little
  along x so that lines with equal values stay visible.
- ``attack_vs_epsilon``: the audit's success (reconstruction PSNR in dB, or recovered-token F1)
  against ε, laid out the same way.
- ``privacy_utility_frontier``: utility against attack success, one point per setting (mean over
  seeds, min-max whiskers), the Pareto front (highest utility for the least leakage) marked.
- ``reconstructions``: the audit's reconstructions per setting (images: originals next to
  reconstructions from the saved pixel arrays, else each point's ``reconstructions.png``; text:
  original and recovered sentences).
- ``loss_curves``: each point's test (and public) loss per unit, FFM public units shaded.

For one run directory (``secure-ffm report RUN_DIR``): ``run_curves`` (test accuracy and loss per
round) and, for a continual run, ``accuracy_matrix_heatmap`` (``A[i][j]``: after stage ``i`` on
stage ``j``) and ``stage_accuracy_over_rounds`` (each stage's test accuracy from the round it is
first seen, stage boundaries and the rounds where a client's privacy budget ran out marked).
A sweep report draws the heatmap of each continual point too.

Each is written as PNG and SVG. Matplotlib is used through its object API with the Agg canvas
(no pyplot state, no display needed).
"""

from __future__ import annotations

import json
import math
import textwrap
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.text import Text
from matplotlib.ticker import MaxNLocator
from matplotlib.transforms import Bbox, blended_transform_factory

from eval.continual import ContinualSummary, headline, stage_accuracy_series, stage_starts
from eval.metrics import pareto_front
from eval.results import budget_mechanisms, mechanism_label, read_results, row_mechanism, spends_budget
from secure_ffm.run.checkpoint import write_atomically

PLOTS = ("accuracy_vs_epsilon", "attack_vs_epsilon", "privacy_utility_frontier", "reconstructions")
MARKERS = ("o", "s", "^", "D", "v", "P", "X")
"""Markers of the mechanisms that spend a budget, in registry order; runs without DP (ε = ∞) are stars."""
LINE_STYLES = ("-", "--", "-.", ":")
NO_DP_MARKER = "*"
METRIC_AXES: dict[str, tuple[str, float]] = {
    "accuracy": ("test accuracy (%)", 100.0),
    "macro_f1": ("test macro F1 (%)", 100.0),
    "psnr": ("reconstruction PSNR (dB)", 1.0),
    "ssim": ("reconstruction SSIM (0-1)", 1.0),
    "mse": ("reconstruction MSE", 1.0),
    "token_f1": ("recovered-token F1 (%)", 100.0),
    "rouge1": ("ROUGE-1 F (%)", 100.0),
    "rougeL": ("ROUGE-L F (%)", 100.0),
}
BUDGET_COLOR = "#b00020"
"""Marks of the rounds where a client's privacy budget ran out (it stops contributing)."""
STAGE_LINE_COLOR = "0.45"
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22")


@dataclass
class Setting:
    """One grid setting (every axis chosen), aggregated over its seeds."""

    settings: tuple[tuple[str, str], ...]
    rows: list[dict[str, Any]] = field(default_factory=list)
    label: str = ""

    @property
    def first(self) -> dict[str, Any]:
        return self.rows[0]

    @property
    def mechanism(self) -> str:
        return row_mechanism(self.first)

    @property
    def spends_budget(self) -> bool:
        """Whether the setting's mechanism gives an ε (its registered class's ``spends_budget``); else ε = ∞."""
        return spends_budget(self.first)

    @property
    def others(self) -> tuple[tuple[str, str], ...]:
        """The settings of the axes that do not touch ``privacy.*``: what one ε line holds fixed."""
        privacy_axes = set(self.first.get("privacy_axes", []))
        return tuple((a, n) for a, n in self.settings if a not in privacy_axes)

    @property
    def epsilon(self) -> float:
        """The setting's ε: its target (the accountant keeps the ε spent at or below it), else the mean spent over
        the seeds; ``inf`` without DP, NaN when unknown."""
        if not self.spends_budget:
            return math.inf
        if self.first.get("target_epsilon") is not None:
            return float(self.first["target_epsilon"])
        values = [r["epsilon"] for r in self.rows if r.get("epsilon") is not None]
        return float(np.mean(values)) if values else math.nan

    def values(self, metric: str) -> np.ndarray:
        out = []
        for row in self.rows:
            value = row.get(metric) if metric in ("accuracy", "macro_f1", "attack_value") else (row.get("attack_metrics") or {}).get(metric)
            if value is not None:
                out.append(float(value))
        return np.asarray(out, dtype=float)

    def stats(self, metric: str, scale: float = 1.0) -> tuple[float, float, float]:
        """(mean, min, max) over seeds, scaled; NaNs when no seed has the metric."""
        v = self.values(metric) * scale
        if v.size == 0:
            return (math.nan, math.nan, math.nan)
        return (float(v.mean()), float(v.min()), float(v.max()))


def group_settings(rows: Sequence[Mapping[str, Any]]) -> list[Setting]:
    """The finished (status ok) rows grouped by setting, in first-seen order, with unique labels."""
    groups: dict[tuple[tuple[str, str], ...], Setting] = {}
    for row in rows:
        if row.get("status") != "ok":
            continue
        key = tuple((str(a), str(n)) for a, n in (row.get("settings") or {}).items())
        groups.setdefault(key, Setting(key)).rows.append(dict(row))
    settings = list(groups.values())
    counts: dict[str, int] = {}
    for s in settings:
        counts[s.first.get("protection", "")] = counts.get(s.first.get("protection", ""), 0) + 1
    for s in settings:
        protection = str(s.first.get("protection") or "no protection")
        s.label = protection if counts[protection] == 1 else f"{protection} [{', '.join(n for _, n in s.settings)}]"
    return settings


# --------------------------------------------------------------------------- helpers


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, stem: Path, *, private: bool = False) -> tuple[Path, Path]:
    """The figure as ``stem.png`` and ``stem.svg``, each written atomically; ``private``: owner-only (0o600) from the
    first byte, for a figure that shows clients' examples (until 2026-12-07 the reconstructions took the umask's mode,
    0o644, while the same pixels under ``points/*/attack/`` were 0o600)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    png, svg = stem.with_suffix(".png"), stem.with_suffix(".svg")
    with warnings.catch_warnings():
        # recovered text may hold tokens of scripts the bundled DejaVu fonts lack: they render as boxes
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from font", category=UserWarning)
        write_atomically(png, lambda tmp: fig.savefig(tmp, dpi=150, format="png"), private=private)
        write_atomically(svg, lambda tmp: fig.savefig(tmp, format="svg"), private=private)
    return png, svg


def _empty(stem: Path, title: str, message: str = "no finished points yet") -> tuple[Path, Path]:
    fig = _figure(6.4, 3.2)
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.set_title(title)
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="0.4")
    fig.tight_layout()
    return _save(fig, stem)


def _metric_axis(metric: str) -> tuple[str, float]:
    return METRIC_AXES.get(metric, (metric, 1.0))


def _epsilon_text(value: float) -> str:
    if math.isinf(value):
        return "∞"
    return f"{value:.2g}" if value < 100 else f"{value:.0f}"


def _others_text(others: Sequence[tuple[str, str]]) -> str:
    return ", ".join(f"{axis}={name}" for axis, name in others)


def _style(mechanism: str) -> tuple[str, str]:
    """(marker, line style) of a mechanism that spends a budget: by its place in the registry, so that it keeps its look
    across sweeps; one this installation does not know gets the last ones."""
    names = budget_mechanisms()
    index = names.index(mechanism) if mechanism in names else len(MARKERS) - 1
    return MARKERS[index % len(MARKERS)], LINE_STYLES[index % len(LINE_STYLES)]


def _attack_metric(settings: Sequence[Setting]) -> str | None:
    for s in settings:
        for row in s.rows:
            if row.get("attack_metric"):
                return str(row["attack_metric"])
    return None


# --------------------------------------------------------------------------- metric vs ε


def metric_vs_epsilon(rows: Sequence[Mapping[str, Any]], stem: Path, *, metric: str, title: str, note: str = "") -> tuple[Path, Path]:
    """``metric`` (row column or attack metric) against ε; see the module docstring."""
    settings = [s for s in group_settings(rows) if not np.all(np.isnan(s.stats(metric)[0]))]
    settings = [s for s in settings if not math.isnan(s.epsilon)]
    if not settings:
        return _empty(stem, title)
    label, scale = _metric_axis(metric)
    finite = sorted({s.epsilon for s in settings if math.isfinite(s.epsilon)})
    inf_x = finite[-1] * 3.0 if finite else 1.0
    colors: dict[tuple[tuple[str, str], ...], str] = {}
    for s in settings:
        colors.setdefault(s.others, COLORS[len(colors) % len(COLORS)])

    fig = _figure(9.6, 4.8)
    ax = fig.add_subplot()
    ax.set_xscale("log")
    lines: dict[tuple[str, tuple[tuple[str, str], ...]], list[Setting]] = {}
    for s in settings:
        lines.setdefault((s.mechanism, s.others), []).append(s)
    no_dp = {s.others: s for s in settings if not s.spends_budget}
    # dodge: shift each line a little along the (log) x axis, so that lines with equal values stay visible
    dodge = {key: math.exp(0.05 * (i - (len(lines) - 1) / 2)) for i, key in enumerate(lines)}
    inf_dodge = {others: math.exp(0.05 * (i - (len(no_dp) - 1) / 2)) for i, others in enumerate(no_dp)}
    handles = []
    for (mechanism, others), members in lines.items():
        color = colors[others]
        name = mechanism_label(mechanism) + (f" · {_others_text(others)}" if others else "")
        if not members[0].spends_budget:
            for s in members:
                mean, low, high = s.stats(metric, scale)
                ax.errorbar(
                    [inf_x * inf_dodge[others]],
                    [mean],
                    yerr=[[mean - low], [high - mean]],
                    fmt=NO_DP_MARKER,
                    ms=12,
                    color=color,
                    capsize=3,
                    zorder=3,
                )
            handles.append(Line2D([], [], marker=NO_DP_MARKER, ms=10, color=color, linestyle="none", label=name))
            continue
        marker, style = _style(mechanism)
        members = sorted(members, key=lambda s: s.epsilon)
        xs = np.array([s.epsilon for s in members]) * dodge[(mechanism, others)]
        stats = np.array([s.stats(metric, scale) for s in members])
        ax.plot(xs, stats[:, 0], marker=marker, linestyle=style, color=color, zorder=3)
        if len(members) > 1:
            ax.fill_between(xs, stats[:, 1], stats[:, 2], color=color, alpha=0.15, linewidth=0)
        else:
            ax.errorbar(xs, stats[:, 0], yerr=[stats[:, 0] - stats[:, 1], stats[:, 2] - stats[:, 0]], fmt="none", color=color, capsize=3)
        if others in no_dp:  # continue the line to the same setting without DP, across the break
            mean = no_dp[others].stats(metric, scale)[0]
            ax.plot([xs[-1], inf_x * inf_dodge[others]], [stats[-1, 0], mean], linestyle=":", color=color, linewidth=1)
        handles.append(Line2D([], [], marker=marker, linestyle=style, color=color, label=name))

    ticks = [*finite, inf_x]
    ax.set_xticks(ticks)
    ax.set_xticklabels([_epsilon_text(t) for t in finite] + ["∞"])
    ax.minorticks_off()
    low, high = (finite[0] if finite else inf_x) / 1.8, inf_x * 1.8
    ax.set_xlim(low, high)
    if finite:  # broken-axis marks between the largest finite ε and ∞
        brk = math.sqrt(finite[-1] * inf_x)
        trans = blended_transform_factory(ax.transData, ax.transAxes)
        for dx in (-0.045, 0.045):
            x = brk * math.exp(dx * math.log(high / low))
            ax.plot([x / 1.06, x * 1.06], [-0.025, 0.025], transform=trans, color="k", linewidth=1, clip_on=False, zorder=5)
        ax.axvline(brk, color="0.85", linewidth=0.8, zorder=0)
    ax.set_xlabel("privacy budget ε (target; log scale; ∞ = no differential privacy)")
    ax.set_ylabel(label)
    ax.set_title(title + (f"\n{note}" if note else ""), fontsize=11)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(
        handles=handles,
        fontsize=8,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        title="band / whiskers: min-max over seeds",
        title_fontsize=7,
    )
    fig.tight_layout()
    return _save(fig, stem)


def accuracy_vs_epsilon(rows: Sequence[Mapping[str, Any]], stem: Path) -> tuple[Path, Path]:
    return metric_vs_epsilon(rows, stem, metric="accuracy", title="Utility vs privacy budget")


def attack_vs_epsilon(rows: Sequence[Mapping[str, Any]], stem: Path) -> tuple[Path, Path]:
    metric = _attack_metric(group_settings(rows))
    if metric is None:
        return _empty(stem, "Attack success vs privacy budget", "no audit results (the sweep has no [attack])")
    attack = next((r.get("attack") for r in rows if r.get("attack")), "attack")
    return metric_vs_epsilon(rows, stem, metric=metric, title=f"Attack success vs privacy budget ({attack})", note="higher = more leakage")


# --------------------------------------------------------------------------- frontier


def place_labels(fig: Figure, ax: Any, points: Sequence[tuple[float, float]], labels: Sequence[str], *, fontsize: float = 8) -> list[Any]:
    """Annotate each point with its label where it overlaps no other label, point or the axes' edge.

    Greedy: for each point, try offsets on rings of growing radius up to 160 points (right, left, above, below,
    diagonals) and keep the first whose text box is free; else the least-overlapping one. Long
    offsets get a leader line. Returns the annotations.
    """
    renderer = fig.canvas.get_renderer()
    axes_box = ax.get_window_extent(renderer)
    centers = [ax.transData.transform(p) for p in points]
    taken: list[Bbox] = [Bbox.from_bounds(cx - 5, cy - 5, 10, 10) for cx, cy in centers]
    directions = [(1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (-1, 1), (1, -1), (-1, -1)]
    annotations = []
    order = sorted(range(len(points)), key=lambda i: -centers[i][1])
    for i in order:
        best: tuple[float, Any, Bbox] | None = None
        for radius in (7, 14, 24, 36, 50, 70, 95, 125, 160):
            for dx, dy in directions:
                ha = "left" if dx > 0 else "right" if dx < 0 else "center"
                va = "bottom" if dy > 0 else "top" if dy < 0 else "center"
                ann = ax.annotate(
                    labels[i], points[i], xytext=(dx * radius, dy * radius), textcoords="offset points", ha=ha, va=va, fontsize=fontsize,
                    arrowprops={"arrowstyle": "-", "color": "0.6", "linewidth": 0.6} if radius > 14 else None,
                )  # fmt: skip
                ann.update_positions(renderer)
                box = Text.get_window_extent(ann, renderer).padded(2)  # the text only: an Annotation's own extent includes its leader line
                cost = sum(_overlap(box, other) for other in taken)
                cost += box.width * box.height - _overlap(box, axes_box)  # outside the axes
                if best is None or cost < best[0]:
                    if best is not None:
                        best[1].remove()
                    best = (cost, ann, box)
                else:
                    ann.remove()
                if cost == 0:
                    break
            if best is not None and best[0] == 0:
                break
        assert best is not None
        taken.append(best[2])
        annotations.append(best[1])
    return annotations


def _overlap(a: Bbox, b: Bbox) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return w * h if w > 0 and h > 0 else 0.0


def privacy_utility_frontier(rows: Sequence[Mapping[str, Any]], stem: Path) -> tuple[Path, Path]:
    """Utility (test accuracy) against attack success, one point per setting, Pareto front marked."""
    title = "Privacy-utility frontier"
    settings = group_settings(rows)
    metric = _attack_metric(settings)
    if metric is None:
        return _empty(stem, title, "no audit results (the sweep has no [attack])")
    x_label, x_scale = _metric_axis(metric)
    y_label, y_scale = _metric_axis("accuracy")
    data = [(s, s.stats("attack_value", x_scale), s.stats("accuracy", y_scale)) for s in settings]
    data = [(s, x, y) for s, x, y in data if not (math.isnan(x[0]) or math.isnan(y[0]))]
    if not data:
        return _empty(stem, title)
    points = [(x[0], y[0]) for _, x, y in data]
    front = pareto_front(points)
    fig = _figure(9.8, 5.4)
    ax = fig.add_subplot()
    for index, (s, x, y) in enumerate(data):
        marker = _style(s.mechanism)[0] if s.spends_budget else NO_DP_MARKER
        ax.errorbar(
            [x[0]], [y[0]], xerr=[[x[0] - x[1]], [x[2] - x[0]]], yerr=[[y[0] - y[1]], [y[2] - y[0]]],
            fmt=marker, ms=8 if marker != "*" else 11, color=COLORS[index % len(COLORS)],
            ecolor="0.75", elinewidth=0.8, capsize=2, zorder=3,
        )  # fmt: skip
    fx = [points[i][0] for i in front]
    fy = [points[i][1] for i in front]
    ax.step(fx, fy, where="post", color="k", linewidth=1.2, alpha=0.6, zorder=2)
    ax.scatter(fx, fy, s=190, facecolors="none", edgecolors="k", linewidths=1.2, zorder=4)
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    xpad = (max(xs) - min(xs)) * 0.25 or max(abs(xs[0]) * 0.25, 1.0)
    ypad = (max(ys) - min(ys)) * 0.25 or max(abs(ys[0]) * 0.25, 1.0)
    ax.set_xlim(min(xs) - xpad, max(xs) + xpad)
    ax.set_ylim(min(ys) - ypad, max(ys) + ypad)
    ax.set_xlabel(f"attack success: {x_label}  (→ more leakage)")
    ax.set_ylabel(f"utility: {y_label}")
    ax.set_title(f"{title}: better settings lie up and to the left", fontsize=11)
    ax.grid(True, alpha=0.3)
    present = {s.mechanism: s.spends_budget for s, _, _ in data}
    order = {name: i for i, name in enumerate(budget_mechanisms())}
    legend = [
        Line2D(
            [],
            [],
            marker=_style(m)[0] if spends else NO_DP_MARKER,
            ms=6 if spends else 10,
            linestyle="none",
            color="0.3",
            label=mechanism_label(m),
        )
        for m, spends in sorted(present.items(), key=lambda item: (not item[1], order.get(item[0], len(order)), item[0]))
    ]
    legend += [
        Line2D(
            [],
            [],
            marker="o",
            ms=12,
            markerfacecolor="none",
            markeredgecolor="k",
            linestyle="-",
            color="k",
            alpha=0.6,
            label="Pareto front",
        ),
    ]
    ax.legend(
        handles=legend,
        fontsize=8,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        title="mean over seeds;\nwhiskers min-max",
        title_fontsize=7,
    )
    fig.tight_layout()
    place_labels(fig, ax, points, [s.label for s, _, _ in data])
    return _save(fig, stem)


# --------------------------------------------------------------------------- reconstructions


def reconstructions(rows: Sequence[Mapping[str, Any]], sweep_dir: Path, stem: Path, *, redacted: str | None = None) -> tuple[Path, Path]:
    """Each setting's reconstructions (first seed that has them): image panels, or a table of sentences; with ``redacted``
    (why: eval.report.examples_redacted) a panel that says so, and no example."""
    title = "Example reconstructions per setting"
    if redacted is not None:
        return _empty(stem, title, redacted)
    settings = group_settings(rows)
    images = []
    texts = []
    arrays = []
    for s in settings:
        row = next((r for r in s.rows if _has_pixels(r, sweep_dir)), None)
        if row is not None:
            arrays.append((s, row))
            continue
        row = next((r for r in s.rows if r.get("reconstruction") and (sweep_dir / r["reconstruction"]).is_file()), None)
        if row is not None:
            images.append((s, row))
            continue
        row = next((r for r in s.rows if r.get("texts")), None)
        if row is not None:
            texts.append((s, row))
    if arrays:
        return _pixel_grid(arrays, sweep_dir, stem, title)
    if images:
        return _image_panels(images, sweep_dir, stem, title)
    if texts:
        return _text_table(texts, stem, title)
    return _empty(stem, title, "no reconstructions recorded")


def _has_pixels(row: Mapping[str, Any], sweep_dir: Path) -> bool:
    paths = row.get("reconstruction_pixels") or {}
    return bool(row.get("reconstruction_pairs")) and all(
        paths.get(k) and (sweep_dir / paths[k]).is_file() for k in ("original", "reconstructed")
    )


def _show(ax: Any, image: np.ndarray) -> None:
    image = np.asarray(image, dtype=float)
    if image.ndim == 3 and image.shape[0] in (1, 3):
        image = image[0] if image.shape[0] == 1 else np.transpose(image, (1, 2, 0))
    ax.imshow(np.clip(image, 0.0, 1.0), cmap="gray" if image.ndim == 2 else None, vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _pixel_grid(
    items: Sequence[tuple[Setting, Mapping[str, Any]]], sweep_dir: Path, stem: Path, title: str, *, max_pairs: int = 4
) -> tuple[Path, Path]:
    """One row per setting: up to ``max_pairs`` (original, reconstruction) pairs, PSNR under each reconstruction."""
    pairs_shown = min(max_pairs, max(len(row["reconstruction_pairs"]) for _, row in items))
    columns = 2 * pairs_shown
    fig = _figure(max(5.5, 2.6 + 1.15 * columns), 1.25 * len(items) + 0.9)
    for r, (s, row) in enumerate(items):
        paths = row["reconstruction_pixels"]
        originals = np.load(sweep_dir / paths["original"], allow_pickle=False)
        reconstructed = np.load(sweep_dir / paths["reconstructed"], allow_pickle=False)
        for c in range(pairs_shown):
            ax_o = fig.add_subplot(len(items), columns, r * columns + 2 * c + 1)
            ax_r = fig.add_subplot(len(items), columns, r * columns + 2 * c + 2)
            if c >= len(row["reconstruction_pairs"]):
                ax_o.set_axis_off()
                ax_r.set_axis_off()
                continue
            pair = row["reconstruction_pairs"][c]
            _show(ax_o, originals[pair["truth_index"]])
            _show(ax_r, reconstructed[pair["index"]])
            psnr = pair.get("psnr")
            ax_r.set_xlabel("-" if psnr is None else f"{psnr:.1f} dB", fontsize=7, labelpad=1)
            if r == 0:
                ax_o.set_title("original", fontsize=8)
                ax_r.set_title("reconstructed", fontsize=8)
            if c == 0:
                ax_o.set_ylabel("\n".join(textwrap.wrap(s.label, 24)), rotation=0, ha="right", va="center", fontsize=8, labelpad=6)
    fig.suptitle("Reconstructions per setting (first seed)", fontsize=10)
    fig.tight_layout()
    return _save(fig, stem, private=True)  # clients' examples


def _image_panels(items: Sequence[tuple[Setting, Mapping[str, Any]]], sweep_dir: Path, stem: Path, title: str) -> tuple[Path, Path]:
    from matplotlib.image import imread

    columns = min(3, len(items))
    rows = math.ceil(len(items) / columns)
    pictures = [imread(sweep_dir / row["reconstruction"]) for _, row in items]
    aspect = max(p.shape[0] / p.shape[1] for p in pictures)
    width = 4.2
    fig = _figure(width * columns, (width * aspect + 0.7) * rows + 0.5)
    for index, ((s, row), picture) in enumerate(zip(items, pictures, strict=True)):
        ax = fig.add_subplot(rows, columns, index + 1)
        ax.imshow(picture, interpolation="nearest")
        ax.set_axis_off()
        metric, value = row.get("attack_metric"), row.get("attack_value")
        score = "" if value is None else f"\n{metric} {value:.1f} dB" if metric == "psnr" else f"\n{metric} {value:.3g}"
        ax.set_title("\n".join(textwrap.wrap(s.label, 40)) + score + f" (seed {row.get('seed')})", fontsize=8)
    fig.suptitle(title + ": originals (top row of each panel) and reconstructions", fontsize=11)
    fig.tight_layout()
    return _save(fig, stem, private=True)  # clients' examples


def _text_table(items: Sequence[tuple[Setting, Mapping[str, Any]]], stem: Path, title: str) -> tuple[Path, Path]:
    columns = (("setting", 0.02, 26), ("original", 0.27, 44), ("recovered", 0.60, 44), ("token F1", 0.93, 8))
    entries = []
    for s, row in items:
        sample = row["texts"][0]
        cells = [
            s.label,
            str(sample.get("original") or ""),
            str(sample.get("recovered") or ""),
            "-" if sample.get("token_f1") is None else f"{sample['token_f1']:.2f}",
        ]
        wrapped = [textwrap.wrap(text, width)[:6] or [""] for text, (_, _, width) in zip(cells, columns, strict=True)]
        entries.append(wrapped)
    line = 0.17
    height = 0.9 + sum(max(len(w) for w in wrapped) * line + 0.12 for wrapped in entries)
    fig = _figure(12.0, height)
    y = 1.0 - 0.55 / height
    for name, x, _ in columns:
        fig.text(x, y, name, fontsize=9, fontweight="bold", va="top")
    y -= 0.3 / height
    for wrapped in entries:
        for (name, x, _), lines in zip(columns, wrapped, strict=True):
            fig.text(x, y, "\n".join(lines), fontsize=8, va="top", family="monospace" if name == "recovered" else None)
        y -= (max(len(w) for w in wrapped) * line + 0.12) / height
        fig.add_artist(Line2D([0.02, 0.98], [y + 0.05 / height] * 2, color="0.85", linewidth=0.6, transform=fig.transFigure))
    fig.suptitle(title + ": original and recovered sentence (first example)", fontsize=11, y=1.0 - 0.1 / height, va="top")
    return _save(fig, stem, private=True)  # clients' examples


# --------------------------------------------------------------------------- all


def loss_curves(rows: Sequence[Mapping[str, Any]], sweep_dir: Path, stem: Path) -> tuple[Path, Path]:
    """Each finished point's loss per unit (test loss; public validation loss where the server holds public data),
    with the FFM public units shaded (docs/ffm.md): one panel per point, at most 12."""
    curves = []
    for row in rows:
        metrics = Path(sweep_dir) / "points" / str(row.get("point_id")) / "run" / "metrics.jsonl"
        if row.get("status") != "ok" or not metrics.is_file():
            continue
        history = [json.loads(line) for line in metrics.read_text(encoding="utf-8").splitlines() if line.strip()]
        if history:
            curves.append((str(row.get("point_id")), history))
    title = "Loss per unit (public units shaded)"
    if not curves:
        return _empty(stem, title)
    curves = curves[:12]
    columns = min(3, len(curves))
    lines = math.ceil(len(curves) / columns)
    fig = _figure(4.2 * columns, 2.8 * lines)
    for index, (point, history) in enumerate(curves, 1):
        ax = fig.add_subplot(lines, columns, index)
        _loss_panel(ax, history)
        ax.set_title(point, fontsize=7)
        ax.set_xlabel("unit (round)", fontsize=7)
        ax.tick_params(labelsize=7)
        if index == 1:
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, stem)


def _loss_panel(ax: Any, history: Sequence[Mapping[str, Any]]) -> None:
    """Test loss (and public loss) per unit on ``ax``, the FFM public units shaded."""
    for row in history:
        if row.get("phase") == "public":
            ax.axvspan(row["round"] - 0.5, row["round"] + 0.5, color="#f2d7a6", alpha=0.6, linewidth=0)
    for key, label, color in (("test_loss", "test loss", "#1f77b4"), ("public_loss", "public loss", "#d62728")):
        points = [(r["round"], r[key]) for r in history if r.get(key) is not None]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", markersize=3, label=label, color=color)


# --------------------------------------------------------------------------- one run


def run_curves(history: Sequence[Mapping[str, Any]], stem: Path, *, title: str = "Training curves") -> tuple[Path, Path]:
    """One run's test accuracy (and macro F1) per round, and its losses per round (FFM public units shaded)."""
    accuracy = [(r["round"], 100.0 * r["test_accuracy"]) for r in history if r.get("test_accuracy") is not None]
    if not history or not (accuracy or any(r.get("test_loss") is not None for r in history)):
        return _empty(stem, title, "no evaluated rounds in metrics.jsonl")
    fig = _figure(10.0, 3.8)
    ax = fig.add_subplot(1, 2, 1)
    if accuracy:
        ax.plot(*zip(*accuracy, strict=True), marker="o", markersize=3, color="#1f77b4", label="test accuracy")
    f1 = [(r["round"], 100.0 * r["test_macro_f1"]) for r in history if r.get("test_macro_f1") is not None]
    if f1:
        ax.plot(*zip(*f1, strict=True), marker="s", markersize=3, linestyle="--", color="#ff7f0e", label="test macro F1")
    ax.set_xlabel("round")
    ax.set_ylabel("%")
    ax.grid(True, alpha=0.3)
    if accuracy or f1:
        ax.legend(fontsize=8)
    ax = fig.add_subplot(1, 2, 2)
    _loss_panel(ax, history)
    train = [(r["round"], r["train_loss"]) for r in history if r.get("train_loss") is not None]
    if train:
        ax.plot(*zip(*train, strict=True), marker=".", linestyle=":", color="0.4", label="train loss")
    ax.set_xlabel("round")
    ax.set_ylabel("loss")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, stem)


# --------------------------------------------------------------------------- continual learning


def accuracy_matrix_heatmap(summary_continual: ContinualSummary | Mapping[str, Any], stem: Path) -> tuple[Path, Path]:
    """The accuracy matrix of a continual run: row ``i`` after training stage ``i``, column ``j`` on stage ``j``'s test
    set, each cell annotated with the accuracy in %; cells above the diagonal (stages not seen yet) are blank. The
    title names the method and its average accuracy, forgetting and backward transfer."""
    summary = ContinualSummary.of(summary_continual)
    size = len(summary.stages)
    values = np.full((size, size), np.nan)
    for i in range(size):
        for j in range(size):
            value = summary.accuracy(i, j)
            if value is not None:
                values[i, j] = 100.0 * value
    fig = _figure(max(5.6, 1.15 * size + 3.4), max(4.2, 0.85 * size + 2.6))
    ax = fig.add_subplot()
    from matplotlib import colormaps

    cmap = colormaps["viridis"].with_extremes(bad="white")
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=0.0, vmax=100.0)
    for i in range(size):
        for j in range(size):
            if not math.isnan(values[i, j]):
                color = "white" if values[i, j] < 60.0 else "black"
                ax.text(j, i, f"{values[i, j]:.1f}", ha="center", va="center", color=color, fontsize=9 if size <= 6 else 7)
    names = ["\n".join(textwrap.wrap(name, 14)) for name in summary.names]
    ax.set_xticks(range(size), labels=names, fontsize=8, rotation=30 if size > 3 else 0, ha="right" if size > 3 else "center")
    ax.set_yticks(range(size), labels=[f"after {name}" for name in summary.names], fontsize=8)
    ax.set_xlabel("evaluated on stage j's test set")
    ax.set_ylabel("after training stage i")
    ax.set_xticks(np.arange(-0.5, size, 1.0), minor=True)
    ax.set_yticks(np.arange(-0.5, size, 1.0), minor=True)
    ax.grid(which="minor", color="white", linewidth=1.5)
    ax.tick_params(which="minor", length=0)
    fig.colorbar(image, ax=ax, label="test accuracy (%)", fraction=0.046, pad=0.04)
    ax.set_title("Accuracy matrix A[i][j]\n" + headline(summary), fontsize=9)
    fig.tight_layout()
    return _save(fig, stem)


def stage_accuracy_over_rounds(
    rows: Sequence[Mapping[str, Any]], summary_continual: ContinualSummary | Mapping[str, Any], stem: Path
) -> tuple[Path, Path]:
    """Each stage's test accuracy over the rounds, from the round it is first seen (``metrics.jsonl``'s
    ``stage_accuracy``), one line per stage; dashed vertical lines where a new stage begins, and the rounds in which a
    client first declined to train because its privacy budget was spent marked at the bottom with the clients' ids."""
    summary = ContinualSummary.of(summary_continual)
    title = f"Accuracy per stage over rounds ({summary.method})"
    series = stage_accuracy_series(rows, summary.names)
    if not series:
        return _empty(stem, title, "no per-stage accuracies (stage_accuracy) in metrics.jsonl")
    fig = _figure(9.6, 4.6)
    ax = fig.add_subplot()
    handles = []
    for k, (name, points) in enumerate(series.items()):
        color = COLORS[k % len(COLORS)]
        rounds, accuracies = zip(*points, strict=True)
        ax.plot(rounds, [100.0 * a for a in accuracies], marker="o", markersize=3, color=color, linestyle=LINE_STYLES[k // len(COLORS) % 4])
        handles.append(Line2D([], [], marker="o", markersize=3, color=color, label=name))
    top = blended_transform_factory(ax.transData, ax.transAxes)
    first = summary.stages[0]
    first_round = first.first_round if first.first_round is not None else min(p[0][0] for p in series.values())
    for name, start in [(first.name, float(first_round)), *stage_starts(summary, rows)]:
        if name != first.name:
            ax.axvline(start - 0.5, color=STAGE_LINE_COLOR, linestyle="--", linewidth=0.9, zorder=1)
        ax.text(start - 0.4, 0.98, textwrap.shorten(name, 18), transform=top, fontsize=7, color="0.3", va="top", ha="left")
    by_round: dict[int, list[int]] = {}
    for entry in summary.budget_exhausted:
        by_round.setdefault(entry.round, []).append(entry.client)
    for round_, clients in sorted(by_round.items()):
        ax.axvline(round_, color=BUDGET_COLOR, linestyle=":", linewidth=1.0, zorder=1)
        ax.plot([round_], [0.0], marker="v", markersize=8, color=BUDGET_COLOR, transform=top, clip_on=False, zorder=4)
        label = ("client " if len(clients) == 1 else "clients ") + ", ".join(str(c) for c in sorted(clients))
        ax.text(round_ + 0.1, 0.04, label, transform=top, fontsize=7, color=BUDGET_COLOR, rotation=90, va="bottom", ha="left")
    if by_round:
        handles.append(
            Line2D([], [], marker="v", linestyle=":", color=BUDGET_COLOR, label="privacy budget spent:\nclient stops contributing")
        )
    ax.set_ylim(0.0, 105.0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds are whole numbers
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy on the stage's test set (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="stage", title_fontsize=8)
    fig.tight_layout()
    return _save(fig, stem)


def write_plots(
    sweep_dir: str | Path,
    out_dir: str | Path | None = None,
    *,
    rows: Sequence[Mapping[str, Any]] | None = None,
    redacted: str | None = None,
) -> dict[str, tuple[Path, Path]]:
    """Every plot of the sweep in ``sweep_dir`` into ``out_dir`` (default ``SWEEP_DIR/plots``): name -> (png, svg);
    ``redacted`` (why) leaves every example out of ``reconstructions``."""
    sweep_dir = Path(sweep_dir)
    out = Path(out_dir) if out_dir is not None else sweep_dir / "plots"
    rows = list(rows) if rows is not None else read_results(sweep_dir)
    return {
        "accuracy_vs_epsilon": accuracy_vs_epsilon(rows, out / "accuracy_vs_epsilon"),
        "attack_vs_epsilon": attack_vs_epsilon(rows, out / "attack_vs_epsilon"),
        "privacy_utility_frontier": privacy_utility_frontier(rows, out / "privacy_utility_frontier"),
        "reconstructions": reconstructions(rows, sweep_dir, out / "reconstructions", redacted=redacted),
        "loss_curves": loss_curves(rows, sweep_dir, out / "loss_curves"),
    }
