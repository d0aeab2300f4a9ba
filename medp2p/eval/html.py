"""``REPORT/index.html``: the evaluation report as one self-contained, offline page.

No CDN and no external script: the CSS and the sorting script are inline, and the montages are
the PNG files beside the page. The page holds the metric definition used (name, source,
text), the summary table, the per-case table (sortable by any column: click a header, or open
``index.html#sort=COLUMN`` / ``#sort=-COLUMN`` for descending), the missing and failed cases,
each case's montage, and, when the predictions came with uncertainty maps, each case's
calibration plot.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

from medp2p.io.atomic import atomic_path

#: The page's file name in the report folder.
HTML_NAME = "index.html"

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #111; background: #fff; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th.sortable { cursor: pointer; background: #eef; user-select: none; }
th.sorted-asc::after { content: " \\25B2"; } th.sorted-desc::after { content: " \\25BC"; }
.definition { background: #f6f6f6; padding: 0.6em 1em; border-left: 4px solid #447; max-width: 70em; }
.failures li { color: #a00; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; }
figure img { max-width: 900px; width: 100%; border: 1px solid #ccc; }
"""

_JS = """
(function () {
  var table = document.getElementById("cases");
  if (!table) { return; }
  var body = table.tBodies[0];
  var headers = table.tHead.rows[0].cells;
  function key(row, col) {
    var cell = row.cells[col];
    var v = cell.getAttribute("data-value");
    if (v === null) { return cell.textContent; }
    var f = parseFloat(v);
    return isNaN(f) ? Infinity : f;
  }
  function sortBy(col, descending) {
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a, col), y = key(b, col);
      var c = (typeof x === "number" && typeof y === "number") ? x - y : String(x).localeCompare(String(y));
      return descending ? -c : c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    for (var i = 0; i < headers.length; i++) { headers[i].classList.remove("sorted-asc", "sorted-desc"); }
    headers[col].classList.add(descending ? "sorted-desc" : "sorted-asc");
    table.setAttribute("data-sorted", headers[col].getAttribute("data-column") + (descending ? ":desc" : ":asc"));
  }
  for (var i = 0; i < headers.length; i++) {
    (function (col) {
      headers[col].addEventListener("click", function () {
        sortBy(col, headers[col].classList.contains("sorted-asc"));
      });
    })(i);
  }
  var m = /[#&]sort=(-?)([^&]+)/.exec(window.location.hash);
  if (m) {
    for (var j = 0; j < headers.length; j++) {
      if (headers[j].getAttribute("data-column") === decodeURIComponent(m[2])) { sortBy(j, m[1] === "-"); }
    }
  }
})();
"""


def _num(value: Any) -> str:
    if isinstance(value, float):
        return "NaN" if math.isnan(value) else f"{value:.4g}"
    return html.escape(str(value))


def render_report(summary: dict[str, Any], rows: list[dict[str, Any]], columns: list[str], montages: dict[str, str] | None = None) -> str:
    """The page's HTML for a report's ``summary.json`` content, its per-case rows and columns.

    Args:
        summary: what ``summary.json`` holds (task, metrics, definition, missing, failures, slab).
        rows: ``{"case": id, column: value, ...}`` per scored case.
        columns: the metric columns, in order.
        montages: case id -> its montage's file name in the report folder.

    Example:
        >>> page = render_report(summary, rows, ["mae", "psnr"], {"case_000": "case_000.png"})
    """
    esc = html.escape
    montages = montages or {}
    task = esc(str(summary.get("task", "")))
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>medp2p evaluate: {task}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>medp2p evaluate: {task}, {int(summary.get('cases', len(rows)))} case(s)</h1>",
        '<h2>Metric definition</h2><div class="definition">',
        f"<p><b>{esc(str(summary.get('metric_definition', '')))}</b>: follows <i>{esc(str(summary.get('definition_source', '')))}</i></p>",
        f"<p>{esc(str(summary.get('definitions', '')))}</p>",
    ]
    slab = summary.get("slab")
    if slab:
        parts.append(f"<p>Scored slab: {esc(str(slab.get('axis')))} slices {esc(str(slab.get('slice_range')))}</p>")
    parts.append('</div><h2>Summary</h2><table id="summary"><thead><tr><th>metric</th>')
    stats = ("mean", "std", "median", "min", "max", "n")
    parts += [f"<th>{s}</th>" for s in stats] + ["</tr></thead><tbody>"]
    for name, values in summary.get("metrics", {}).items():
        stat_cells = "".join(f"<td>{_num(values.get(s))}</td>" for s in stats)
        parts.append(f"<tr><td>{esc(name)}</td>{stat_cells}</tr>")
    parts.append("</tbody></table>")
    parts.append('<h2>Cases</h2><p>Click a column to sort.</p><table id="cases"><thead><tr>')
    parts.append('<th class="sortable" data-column="case">case</th>')
    parts += [f'<th class="sortable" data-column="{esc(c)}">{esc(c)}</th>' for c in columns]
    parts.append("</tr></thead><tbody>")
    for row in rows:
        cid = str(row["case"])
        link = f'<a href="#montage-{esc(cid)}">{esc(cid)}</a>' if cid in montages else esc(cid)
        cells = [f"<td>{link}</td>"]
        for c in columns:
            v = row.get(c, float("nan"))
            raw = repr(float(v)) if isinstance(v, int | float) else esc(str(v))
            cells.append(f'<td data-value="{raw}">{_num(v)}</td>')
        parts.append(f'<tr id="case-{esc(cid)}">{"".join(cells)}</tr>')
    parts.append("</tbody></table>")
    missing, failures = summary.get("missing", []), summary.get("failures", [])
    if missing or failures:
        parts.append('<h2>Not scored</h2><ul class="failures">')
        parts += [f"<li>{esc(str(m))}: no prediction</li>" for m in missing]
        parts += [f"<li>{esc(str(f['case']))}: {esc(str(f['error']))}</li>" for f in failures]
        parts.append("</ul>")
    if montages:
        parts.append("<h2>Montages</h2>")
        for cid, name in montages.items():
            parts.append(
                f'<figure id="montage-{esc(cid)}"><img src="{esc(name)}" alt="montage of {esc(cid)}">'
                f"<figcaption>{esc(cid)}</figcaption></figure>"
            )
    plots = summary.get("uncertainty_plots") or {}
    if plots:
        parts.append("<h2>Uncertainty</h2>")
        parts.append(f'<div class="definition"><p>{esc(str(summary.get("calibration") or ""))}</p></div>')
        for cid, name in plots.items():
            parts.append(
                f'<figure id="uncertainty-{esc(cid)}"><img src="{esc(name)}" alt="uncertainty calibration of {esc(cid)}">'
                f"<figcaption>{esc(cid)}: sparsification and error by uncertainty decile</figcaption></figure>"
            )
    parts.append(f"<script>{_JS}</script></body></html>")
    return "\n".join(parts) + "\n"


def write_report_page(
    out: Path, summary: dict[str, Any], rows: list[dict[str, Any]], columns: list[str], montages: dict[str, str] | None = None
) -> Path:
    """Write ``out/index.html`` atomically (see :func:`render_report`); returns its path."""
    path = out / HTML_NAME
    with atomic_path(path) as tmp:
        tmp.write_text(render_report(summary, rows, columns, montages), encoding="utf-8")
    return path
