"""The HTML report of a results file: one self-contained page, plots drawn in the page (pure).

No CDN and no vendored library: the data sits in the page as JSON and a
small SVG renderer (below, ~60 lines of JavaScript) draws, per scenario, the
true grid, the value meteremu served each battery, and each battery's
output and setpoint (the first seed's run). The table gives every metric's
mean over the seeds with its 95 % bootstrap interval.
"""

from __future__ import annotations

import html
import json
from typing import Any

from meteremu.lab.metrics import METRICS

HEADLINE = ("grid_rms_w", "steady_rms_w", "band_crossings_per_h", "hunting_per_h", "settle_mean_s",
            "overshoot_max_w", "avoidable_import_wh", "steerable_import_wh", "avoidable_export_wh",
            "cost_regret_ct", "share_imbalance_w")

SCRIPT = r"""
const COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"];
const NS = "http://www.w3.org/2000/svg";
function el(name, attrs, parent) {
  const node = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (parent) parent.appendChild(node);
  return node;
}
function path(ts, ys, sx, sy) {
  let d = "", pen = false;
  for (let i = 0; i < ts.length; i++) {
    const y = ys[i];
    if (y === null || y === undefined) { pen = false; continue; }
    d += (pen ? "L" : "M") + sx(ts[i]).toFixed(1) + " " + sy(y).toFixed(1);
    pen = true;
  }
  return d;
}
function plot(holder, trace) {
  const W = 960, H = 300, L = 56, R = 10, T = 10, B = 26;
  const series = [{label: "grid (true)", ys: trace.grid, colour: "#000", width: 1.4}];
  series.push({label: "published by the meter", ys: trace.published, colour: "#999", width: 1, dash: "4 3"});
  trace.batteries.forEach((b, i) => {
    const c = COLOURS[i % COLOURS.length];
    series.push({label: b.label + " output", ys: b.power, colour: c, width: 1.2});
    series.push({label: b.label + " setpoint", ys: b.setpoint, colour: c, width: 0.8, dash: "2 2"});
    series.push({label: b.label + " served", ys: b.served, colour: c, width: 0.8, dash: "6 2", opacity: 0.5});
  });
  let lo = Infinity, hi = -Infinity;
  for (const s of series) for (const y of s.ys) if (y !== null) { lo = Math.min(lo, y); hi = Math.max(hi, y); }
  if (!isFinite(lo)) { lo = -1; hi = 1; }
  const pad = (hi - lo) * 0.05 || 1; lo -= pad; hi += pad;
  const t0 = trace.t[0] || 0, t1 = trace.t[trace.t.length - 1] || 1;
  const sx = t => L + (t - t0) / ((t1 - t0) || 1) * (W - L - R);
  const sy = y => T + (hi - y) / (hi - lo) * (H - T - B);
  const svg = el("svg", {viewBox: `0 0 ${W} ${H}`, width: "100%", class: "plot"}, holder);
  for (let k = 0; k <= 5; k++) {
    const y = lo + (hi - lo) * k / 5, x = t0 + (t1 - t0) * k / 5;
    el("line", {x1: L, x2: W - R, y1: sy(y), y2: sy(y), stroke: "#eee"}, svg);
    el("text", {x: L - 4, y: sy(y) + 4, "text-anchor": "end", "font-size": 10}, svg).textContent = Math.round(y);
    el("text", {x: sx(x), y: H - 8, "text-anchor": "middle", "font-size": 10}, svg).textContent = Math.round(x) + " s";
  }
  el("line", {x1: L, x2: W - R, y1: sy(0), y2: sy(0), stroke: "#bbb"}, svg);
  for (const [t, label] of trace.events) {
    const line = el("line", {x1: sx(t), x2: sx(t), y1: T, y2: H - B, stroke: "#f4c430", "stroke-width": 0.6}, svg);
    el("title", {}, line).textContent = label;
  }
  for (const s of series) {
    const attrs = {d: path(trace.t, s.ys, sx, sy), fill: "none", stroke: s.colour, "stroke-width": s.width,
                   "class": "series", "data-label": s.label};
    if (s.dash) attrs["stroke-dasharray"] = s.dash;
    if (s.opacity) attrs["stroke-opacity"] = s.opacity;
    el("path", attrs, svg);
  }
  const legend = document.createElement("div");
  legend.className = "legend";
  legend.innerHTML = series.map(s => `<span style="color:${s.colour}">&#9632; ${s.label}</span>`).join(" ");
  holder.appendChild(legend);
}
const data = JSON.parse(document.getElementById("lab-data").textContent);
for (const holder of document.querySelectorAll("[data-plot]")) {
  const trace = data[holder.dataset.plot];
  if (trace) plot(holder, trace);
}
document.body.dataset.rendered = "yes";
"""

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ddd;padding:3px 6px;text-align:right}
th{background:#f6f6f6}td.name{text-align:left}.ci{color:#888;font-size:10px}
.legend{font-size:11px;margin:2px 0 18px}.legend span{margin-right:10px}
section{margin-top:1.5em}h2{font-size:16px;margin-bottom:2px}p.d{margin:0;color:#555}
"""


def _cell(summary: list[float]) -> str:
    centre, low, high = summary
    return f"{centre:.1f}<br><span class=ci>[{low:.1f}, {high:.1f}]</span>"


def render(results: dict[str, Any]) -> str:
    """The report page of one results file (``meteremu-lab run`` output)."""
    meta = results.get("meta", {})
    scenarios: dict[str, Any] = results["results"]
    head = "".join(f"<th>{html.escape(k)} ({METRICS[k]})</th>" for k in HEADLINE)
    rows = []
    for name, entry in scenarios.items():
        cells = "".join(f"<td>{_cell(entry['summary'][k]) if k in entry['summary'] else '—'}</td>"
                        for k in HEADLINE)
        rows.append(f"<tr><td class=name><a href='#{html.escape(name)}'>{html.escape(name)}</a></td>{cells}</tr>")
    sections = []
    for name, entry in scenarios.items():
        full = "".join(f"<tr><td class=name>{html.escape(k)}</td><td>{_cell(v)}</td></tr>"
                       for k, v in entry["summary"].items())
        sections.append(
            f"<section id='{html.escape(name)}'><h2>{html.escape(name)}</h2>"
            f"<p class=d>{html.escape(entry['description'])} — {entry['duration_s']:g} s, "
            f"batteries: {html.escape(', '.join(entry['batteries']))}; plot: seed {results['seeds'][0]}</p>"
            f"<div data-plot='{html.escape(name)}'></div>"
            f"<details><summary>all metrics</summary><table>{full}</table></details></section>")
    traces = {name: entry.get("trace") for name, entry in scenarios.items() if entry.get("trace")}
    payload = json.dumps(traces, separators=(",", ":")).replace("</", "<\\/")
    title = f"meteremu battery lab — scaling {results.get('scaling')}, {results.get('clock')} clock"
    info = (f"{html.escape(emulator(results))}; seeds {results['seeds'][0]}–{results['seeds'][-1]} "
            f"({len(results['seeds'])}); "
            f"{html.escape(str(meta.get('date', '')))}; commit {html.escape(str(meta.get('commit', '')))}; "
            f"{html.escape(str(meta.get('machine', '')))}")
    return (f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1><p>{info}</p>"
            f"<p>Mean over seeds, 95 % bootstrap interval below each value. Lower is better everywhere.</p>"
            f"<table><tr><th>scenario</th>{head}</tr>{''.join(rows)}</table>{''.join(sections)}"
            f"<script type='application/json' id='lab-data'>{payload}</script>"
            f"<script>{SCRIPT}</script></body></html>")


TABLE = ("grid_rms_w", "band_crossings_per_h", "hunting_per_h", "settle_mean_s", "overshoot_max_w",
         "avoidable_import_wh", "steerable_import_wh", "avoidable_export_wh", "cost_regret_ct", "share_imbalance_w")


def markdown_table(files: list[dict[str, Any]]) -> str:
    """docs/control.md's results table: one row per scenario and results file (its scaling; also what
    it measured and its clock where the files differ in those, e.g. meteremu against a peer's CT002).

    Each cell is the mean over the seeds and its 95 % bootstrap interval.
    """
    head = "| scenario | scaling | " + " | ".join(f"{k} ({METRICS[k]})" for k in TABLE) + " |"
    lines = [head, "|" + "---|" * (len(TABLE) + 2)]
    names: list[str] = []
    for results in files:
        names += [n for n in results["results"] if n not in names]
    for name in names:
        rows = []
        for results in files:
            entry = results["results"].get(name)
            if entry is None:
                continue
            cells = []
            for k in TABLE:
                if k not in entry["summary"]:  # a results file from before the metric existed
                    cells.append("—")
                    continue
                centre, low, high = entry["summary"][k]
                cells.append(f"{centre:.1f} [{low:.1f}, {high:.1f}]")
            rows.append((_row_label(results, files), " | ".join(cells)))
        if len(rows) > 1 and len({cells for _, cells in rows}) == 1:
            rows = [("all alike", rows[0][1])]  # one battery: the modes cannot differ
        lines += [f"| {name} | {scaling} | {cells} |" for scaling, cells in rows]
    return "\n".join(lines)


def _row_label(results: dict[str, Any], files: list[dict[str, Any]]) -> str:
    """A file's scaling, with its emulator and clock when the files do not all share them."""
    label = str(results.get("scaling"))
    if len({emulator(f) for f in files}) > 1:
        label += f", {emulator(results)}"
    if len({str(f.get("clock")) for f in files}) > 1:
        label += f", {results.get('clock')} clock"
    return label


# The goals (#16): a multi-battery scenario and the single-battery scenario on
# the same household whose band crossings it must not exceed (None: no such scenario).
GOAL_SCENARIOS: dict[str, str | None] = {
    "two_venus_steps": "venus_steps", "mixed_cadence": "venus_steps", "mixed_power_limits": "venus_steps",
    "three_venus_phases": "venus_steps", "four_marstek": "venus_steps", "two_venus_solar": None,
    "two_venus_noisy": "venus_noisy", "two_venus_one_empty": None,
}
CONTROL_MODES = ("control", "ct002", "ct002_relay")


def emulator(results: dict[str, Any]) -> str:
    """What a results file measured: its ``meta.emulator`` (files from before it was kept: meteremu)."""
    return str(results.get("meta", {}).get("emulator", "meteremu"))


def describe(results: dict[str, Any]) -> str:
    """One line naming a results file's run: emulator, clock, scaling, seeds, commit, date."""
    meta = results.get("meta", {})
    feed = f" fed by {meta['feed']}" if meta.get("feed") else ""
    return (f"{emulator(results)}{feed}; {results.get('clock', '?')} clock, scaling {results.get('scaling', '?')}, "
            f"{len(results.get('seeds', []))} seeds; lab commit {meta.get('commit', '?')}, {meta.get('date', '?')}")


def markdown_header(files: list[dict[str, Any]]) -> str:
    """Where and when the results came from: machine, dates, commits, seeds, clock (and what was
    measured, when any file measured something other than meteremu)."""
    metas = [f.get("meta", {}) for f in files]
    machines = sorted({str(m.get("machine", "?")) for m in metas})
    dates = sorted(str(m.get("date", "?")) for m in metas)
    commits = sorted({str(m.get("commit", "?")) for m in metas})
    seeds = sorted({len(f.get("seeds", [])) for f in files})
    modes = ", ".join(str(f.get("scaling")) for f in files)
    emulators = list(dict.fromkeys(emulator(f) for f in files))
    measured = f" Measured: {'; '.join(emulators)}." if emulators != ["meteremu"] else ""
    return (f"Machine: {'; '.join(machines)}. Dates {dates[0]} to {dates[-1]}; commit "
            f"{', '.join(f'`{c}`' for c in commits)}; {'/'.join(map(str, seeds))} seeds; "
            f"{files[0].get('clock', '?')} clock; modes {modes}.{measured}")


def _mean(entry: dict[str, Any], key: str) -> tuple[float, float, float]:
    centre, low, high = entry["summary"][key]
    return float(centre), float(low), float(high)


# A metric the goals are judged on, and the raw one it stands for in results files made
# before it existed (they are judged on the raw one).
JUDGED = {"steerable_import_wh": "avoidable_import_wh", "hunting_per_h": "band_crossings_per_h"}


def _judged(entry: dict[str, Any], key: str) -> float:
    """The mean of ``key``, or of the raw metric it stands for in an older results file."""
    summary = entry["summary"]
    return _mean(entry, key if key in summary else JUDGED[key])[0]


def _cut(value: float, base: float) -> float:
    return 1 - value / base if base > 0 else 0.0


def markdown_goals(files: list[dict[str, Any]]) -> str:
    """The issue's goals per multi-battery scenario and control mode, from results files by mode.

    Steerable import cut against ``none`` and ``divide`` (≥ 40 %), the settle
    time of the big (≥ 1.5 kW) steps (< 15 s; each run's p95 over its big
    steps, the mean over seeds with the interval's upper end), hunting (band
    crossings per hour of the grid without the household's noise) against
    one battery on the same household under ``none`` (no more), each a ✓ or
    ✗. Steerable is avoidable import without the household's sub-second
    noise (:mod:`meteremu.lab.metrics`); the raw cut and the raw crossings
    stand beside, unjudged.
    """
    by_mode = {str(f.get("scaling")): f["results"] for f in files}
    lines = ["| scenario | mode | steerable import Wh: none / divide / mode | cut vs none | cut vs divide "
             "| big-step settle p95 s [hi] | hunting/h: mode vs one battery | goals "
             "| raw avoidable import cut vs none / divide | raw crossings/h: mode vs one battery |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    none, divide = by_mode.get("none", {}), by_mode.get("divide", {})
    for name, single in GOAL_SCENARIOS.items():
        if name not in none or name not in divide:
            continue
        base_none, base_div = _judged(none[name], "steerable_import_wh"), _judged(divide[name], "steerable_import_wh")
        raw_none, raw_div = _mean(none[name], "avoidable_import_wh")[0], _mean(divide[name], "avoidable_import_wh")[0]
        ref = none.get(single) if single else None
        for mode in CONTROL_MODES:
            entry = by_mode.get(mode, {}).get(name)
            if entry is None:
                continue
            steerable = _judged(entry, "steerable_import_wh")
            cut_none, cut_div = _cut(steerable, base_none), _cut(steerable, base_div)
            settle, _, settle_hi = _mean(entry, "big_step_settle_s")
            hunting = _judged(entry, "hunting_per_h")
            ref_hunting = _judged(ref, "hunting_per_h") if ref else None
            ok = [cut_none >= 0.4, cut_div >= 0.4, settle < 15.0]
            if ref_hunting is not None:
                ok.append(hunting <= ref_hunting)
            raw = _mean(entry, "avoidable_import_wh")[0]
            crossings = _mean(entry, "band_crossings_per_h")[0]
            ref_crossings = f"{_mean(ref, 'band_crossings_per_h')[0]:.0f}" if ref else "—"
            ref_text = f"{ref_hunting:.0f}" if ref_hunting is not None else "—"
            lines.append(f"| {name} | {mode} | {base_none:.1f} / {base_div:.1f} / {steerable:.1f} | {cut_none:.0%} "
                         f"| {cut_div:.0%} | {settle:.1f} [{settle_hi:.1f}] | {hunting:.0f} vs {ref_text} "
                         f"| {'✓' if all(ok) else '✗ ' + str(sum(not x for x in ok)) + ' missed'} "
                         f"| {_cut(raw, raw_none):.0%} / {_cut(raw, raw_div):.0%} | {crossings:.0f} vs {ref_crossings} |")
    singles = [n for n in none if n not in GOAL_SCENARIOS and len(none[n]["batteries"]) == 1]
    if singles:
        head = " | ".join(f"{label}: none / mode" for _, label in SINGLE_COLUMNS)
        lines += ["", f"| one battery | mode | {head} |", "|---|---|" + "---|" * len(SINGLE_COLUMNS)]
        for name in singles:
            for mode in CONTROL_MODES:
                entry = by_mode.get(mode, {}).get(name)
                if entry is None:
                    continue
                cells = [f"{_single(none[name], k)} / {_single(entry, k)}" for k, _ in SINGLE_COLUMNS]
                lines.append(f"| {name} | {mode} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# The single-battery table's columns: metric and heading.
SINGLE_COLUMNS = (("steerable_import_wh", "steerable import Wh"), ("avoidable_import_wh", "avoidable import Wh"),
                  ("hunting_per_h", "hunting/h"), ("band_crossings_per_h", "crossings/h"), ("grid_rms_w", "grid RMS W"))


def _single(entry: dict[str, Any], key: str) -> str:
    """One cell of the single-battery table; "—" for a metric an older results file lacks."""
    return f"{_mean(entry, key)[0]:.1f}" if key in entry["summary"] else "—"
