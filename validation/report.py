"""HTML report of a gate verdict (`validation/gate.py`), written beside its JSON.

Where it sits: validation output. Export and `cartwise validate --candidate`
write `<name>.json` (machine-readable verdict) and `<name>.html` (this report:
status, every failing feature and statistic, then every drift check and
expectation summary per dataset) so a data team sees why a batch was blocked.
"""
from __future__ import annotations

import html
import json
from pathlib import Path

_COLOURS = {"pass": "#1a7f37", "blocked": "#b35900", "error": "#cf222e"}


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return html.escape(json.dumps(v, default=str)[:300])
    return html.escape(str(v))


def render(verdict: dict, title: str = "cartwise validation") -> str:
    """The report as an HTML string."""
    st = verdict["status"]
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
           "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
           "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}.f{background:#fde8e8}</style></head><body>",
           f"<h1>{html.escape(title)}</h1>",
           f"<p>Status: <b style='color:{_COLOURS.get(st, '#000')}'>{st.upper()}</b></p>"]
    for e in verdict.get("errors", []):
        out.append(f"<p class='f'>Error: {html.escape(e)}</p>")
    out.append("<h2>Failures</h2><table><tr><th>dataset</th><th>feature</th><th>statistic</th><th>value</th>"
               "<th>threshold</th><th>source</th></tr>")
    for f in verdict["failures"]:
        out.append("<tr class='f'>" + "".join(f"<td>{_fmt(f.get(k))}</td>" for k in
                                              ("dataset", "feature", "statistic", "value", "threshold", "source"))
                   + "</tr>")
    out.append("</table>")
    for name, d in verdict.get("datasets", {}).items():
        ref = d.get("reference")
        out.append(f"<h2>{html.escape(name)}: {d['status']}</h2><p>{d['rows']:,} rows; reference: "
                   f"{_fmt(ref) if ref else 'none (first export establishes it)'}</p>")
        ge = d.get("expectations") or {}
        if ge:
            out.append(f"<p>Great Expectations suite {html.escape(str(ge.get('suite')))}: "
                       f"{ge.get('expectations')} expectations, statistics {_fmt(ge.get('statistics'))}</p>")
        checks = (d.get("drift") or {}).get("checks", [])
        if checks:
            out.append("<table><tr><th>feature</th><th>statistic</th><th>value</th><th>threshold</th></tr>")
            for c in checks:
                cls = "" if c["passed"] else " class='f'"
                out.append(f"<tr{cls}><td>{_fmt(c['feature'])}</td><td>{_fmt(c['statistic'])}</td>"
                           f"<td>{_fmt(c['value'])}</td><td>{_fmt(c['threshold'])}</td></tr>")
            out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out)


def write(verdict: dict, json_path: Path, title: str = "cartwise validation") -> Path:
    """Write the verdict JSON at `json_path` and the HTML report beside it.

    Returns:
        The HTML path.
    """
    json_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(verdict, indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(json_path)
    html_path = json_path.with_suffix(".html")
    html_path.write_text(render(verdict, title))
    return html_path
