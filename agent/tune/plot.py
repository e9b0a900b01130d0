"""The tuner's plot as SVG: fps against watts with the Pareto front (or against p99 latency).

matplotlib is not installed in the agent's environments (and not pinned), so the tuner writes
a small SVG itself instead of a PNG; every browser shows it.
"""

from typing import Any, Dict, List, Optional, Tuple
from xml.sax.saxutils import escape

W, H = 720, 480
LEFT, RIGHT, TOP, BOTTOM = 70, 30, 40, 60


def _scale(lo: float, hi: float) -> Tuple[float, float]:
    if hi <= lo:
        hi = lo + 1.0
    pad = 0.08 * (hi - lo)
    return lo - pad, hi + pad


def svg_plot(results: List[Dict[str, Any]], front: List[Dict[str, Any]], x_key: str,
             x_label: str, title: str, best: Optional[Dict[str, Any]] = None) -> str:
    """An SVG scatter of fps (y) against `x_key` for every measured result, the `front`
    joined by a line, `best` ringed, each point numbered as in the table (its `n`)."""
    points = [r for r in results if r.get("fps") and r.get(x_key) is not None]
    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" '
           'font-family="sans-serif" font-size="12">'.format(W, H),
           '<rect width="100%" height="100%" fill="white"/>',
           '<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>'.format(
               W // 2, escape(title))]
    if not points:
        out.append('<text x="{}" y="{}" text-anchor="middle">no measured points</text>'
                   .format(W // 2, H // 2))
        out.append("</svg>")
        return "\n".join(out)
    x0, x1 = _scale(min(p[x_key] for p in points), max(p[x_key] for p in points))
    y0, y1 = _scale(min(p["fps"] for p in points), max(p["fps"] for p in points))

    def px(x: float, y: float) -> Tuple[float, float]:
        return (LEFT + (x - x0) / (x1 - x0) * (W - LEFT - RIGHT),
                H - BOTTOM - (y - y0) / (y1 - y0) * (H - TOP - BOTTOM))

    out.append('<line x1="{0}" y1="{1}" x2="{2}" y2="{1}" stroke="black"/>'.format(
        LEFT, H - BOTTOM, W - RIGHT))
    out.append('<line x1="{0}" y1="{1}" x2="{0}" y2="{2}" stroke="black"/>'.format(
        LEFT, H - BOTTOM, TOP))
    for i in range(5):
        xv = x0 + (x1 - x0) * i / 4.0
        yv = y0 + (y1 - y0) * i / 4.0
        gx, _ = px(xv, y0)
        _, gy = px(x0, yv)
        out.append('<text x="{:.1f}" y="{}" text-anchor="middle">{:.3g}</text>'.format(
            gx, H - BOTTOM + 18, xv))
        out.append('<text x="{}" y="{:.1f}" text-anchor="end">{:.3g}</text>'.format(
            LEFT - 6, gy + 4, yv))
    out.append('<text x="{}" y="{}" text-anchor="middle">{}</text>'.format(
        (LEFT + W - RIGHT) // 2, H - 18, escape(x_label)))
    out.append('<text x="18" y="{0}" text-anchor="middle" transform="rotate(-90 18 {0})">'
               'frames per second</text>'.format((TOP + H - BOTTOM) // 2))
    if len(front) > 1:
        path = " ".join("{:.1f},{:.1f}".format(*px(r[x_key], r["fps"])) for r in front)
        out.append('<polyline points="{}" fill="none" stroke="#d62728" stroke-width="2"/>'
                   .format(path))
    on_front = set(id(r) for r in front)
    for r in points:
        cx, cy = px(r[x_key], r["fps"])
        color = "#d62728" if id(r) in on_front else "#1f77b4"
        out.append('<circle cx="{:.1f}" cy="{:.1f}" r="5" fill="{}"/>'.format(cx, cy, color))
        out.append('<text x="{:.1f}" y="{:.1f}">{}</text>'.format(cx + 7, cy - 7, r.get("n", "")))
        if best is not None and r is best:
            out.append('<circle cx="{:.1f}" cy="{:.1f}" r="10" fill="none" stroke="green" '
                       'stroke-width="2"/>'.format(cx, cy))
    legend = "red: Pareto front; green ring: chosen setup" if front else \
        "green ring: chosen setup"
    out.append('<text x="{}" y="{}" text-anchor="end" fill="#555">{}</text>'.format(
        W - RIGHT, TOP - 6, legend))
    out.append("</svg>")
    return "\n".join(out)
