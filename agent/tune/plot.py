"""The tuner's plot: fps against watts with the Pareto front (or against p99 latency), as PNG or SVG.

The figure is laid out once as a list of shapes (lines, a polyline, circles, text) in pixel
coordinates; `png_plot` draws them with OpenCV (already one of the agent's dependencies, so no
matplotlib is needed) and `svg_plot` writes them as SVG. `write_plot` picks by the file's suffix.
"""

from typing import Any, Dict, List, Optional, Tuple
from xml.sax.saxutils import escape

W, H = 720, 480
LEFT, RIGHT, TOP, BOTTOM = 70, 30, 40, 60
RED, BLUE, GREEN, BLACK, GREY = "#d62728", "#1f77b4", "#2ca02c", "#000000", "#555555"

Shape = Tuple[Any, ...]


def _scale(lo: float, hi: float) -> Tuple[float, float]:
    if hi <= lo:
        hi = lo + 1.0
    pad = 0.08 * (hi - lo)
    return lo - pad, hi + pad


def _tick(value: float, step: float) -> str:
    """A tick label with as many decimals as the step between ticks needs (W that differ by
    tenths on a 120 W GPU must not all read "123")."""
    decimals = 0
    while decimals < 4 and step * 10 ** decimals < 1.0:
        decimals += 1
    return "{:.{}f}".format(value, decimals)


def layout(results: List[Dict[str, Any]], front: List[Dict[str, Any]], x_key: str,
           x_label: str, title: str, best: Optional[Dict[str, Any]] = None) -> List[Shape]:
    """The figure as shapes: ("line", x1, y1, x2, y2, color), ("poly", [(x, y)...], color),
    ("circle", x, y, r, color, filled), ("text", x, y, text, anchor, color, size, vertical).
    Every measured result is a point numbered as in the table (its `n`); the `front` is joined
    by a line, `best` is ringed."""
    shapes = [("text", W / 2, 22, title, "middle", BLACK, 15, False)]  # type: List[Shape]
    points = [r for r in results if r.get("fps") and r.get(x_key) is not None]
    if not points:
        return shapes + [("text", W / 2, H / 2, "no measured points", "middle", BLACK, 12,
                          False)]
    x0, x1 = _scale(min(p[x_key] for p in points), max(p[x_key] for p in points))
    y0, y1 = _scale(min(p["fps"] for p in points), max(p["fps"] for p in points))

    def px(x: float, y: float) -> Tuple[float, float]:
        return (LEFT + (x - x0) / (x1 - x0) * (W - LEFT - RIGHT),
                H - BOTTOM - (y - y0) / (y1 - y0) * (H - TOP - BOTTOM))

    shapes.append(("line", LEFT, H - BOTTOM, W - RIGHT, H - BOTTOM, BLACK))
    shapes.append(("line", LEFT, H - BOTTOM, LEFT, TOP, BLACK))
    for i in range(5):
        xv, yv = x0 + (x1 - x0) * i / 4.0, y0 + (y1 - y0) * i / 4.0
        shapes.append(("text", px(xv, y0)[0], H - BOTTOM + 18, _tick(xv, (x1 - x0) / 4.0),
                       "middle", BLACK, 12, False))
        shapes.append(("text", LEFT - 6, px(x0, yv)[1] + 4, _tick(yv, (y1 - y0) / 4.0), "end",
                       BLACK, 12, False))
    shapes.append(("text", (LEFT + W - RIGHT) / 2, H - 18, x_label, "middle", BLACK, 12, False))
    shapes.append(("text", 18, (TOP + H - BOTTOM) / 2, "frames per second", "middle", BLACK, 12,
                   True))
    if len(front) > 1:
        shapes.append(("poly", [px(r[x_key], r["fps"]) for r in front], RED))
    on_front = set(id(r) for r in front)
    for r in points:
        cx, cy = px(r[x_key], r["fps"])
        shapes.append(("circle", cx, cy, 5, RED if id(r) in on_front else BLUE, True))
        shapes.append(("text", cx + 7, cy - 7, str(r.get("n", "")), "start", BLACK, 12, False))
        if best is not None and r is best:
            shapes.append(("circle", cx, cy, 10, GREEN, False))
    legend = "red: Pareto front; green ring: chosen setup" if front else \
        "green ring: chosen setup"
    shapes.append(("text", W - RIGHT, TOP - 6, legend, "end", GREY, 12, False))
    return shapes


def svg_plot(results: List[Dict[str, Any]], front: List[Dict[str, Any]], x_key: str,
             x_label: str, title: str, best: Optional[Dict[str, Any]] = None) -> str:
    """The figure (see `layout`) as an SVG document."""
    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" '
           'font-family="sans-serif" font-size="12">'.format(W, H),
           '<rect width="100%" height="100%" fill="white"/>']
    for s in layout(results, front, x_key, x_label, title, best):
        if s[0] == "line":
            out.append('<line x1="{:.1f}" y1="{:.1f}" x2="{:.1f}" y2="{:.1f}" stroke="{}"/>'
                       .format(*s[1:]))
        elif s[0] == "poly":
            out.append('<polyline points="{}" fill="none" stroke="{}" stroke-width="2"/>'.format(
                " ".join("{:.1f},{:.1f}".format(x, y) for x, y in s[1]), s[2]))
        elif s[0] == "circle":
            _, cx, cy, r, color, filled = s
            paint = 'fill="{}"'.format(color) if filled else \
                'fill="none" stroke="{}" stroke-width="2"'.format(color)
            out.append('<circle cx="{:.1f}" cy="{:.1f}" r="{}" {}/>'.format(cx, cy, r, paint))
        else:
            _, x, y, text, anchor, color, size, vertical = s
            turn = ' transform="rotate(-90 {:.1f} {:.1f})"'.format(x, y) if vertical else ""
            out.append('<text x="{:.1f}" y="{:.1f}" text-anchor="{}" fill="{}" font-size="{}"{}>'
                       '{}</text>'.format(x, y, anchor, color, size, turn, escape(text)))
    out.append("</svg>")
    return "\n".join(out)


def _bgr(color: str) -> Tuple[int, int, int]:
    return int(color[5:7], 16), int(color[3:5], 16), int(color[1:3], 16)


def png_plot(results: List[Dict[str, Any]], front: List[Dict[str, Any]], x_key: str,
             x_label: str, title: str, best: Optional[Dict[str, Any]] = None) -> bytes:
    """The figure (see `layout`) drawn with OpenCV, encoded as PNG bytes."""
    import cv2
    import numpy as np
    image = np.full((H, W, 3), 255, np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    for s in layout(results, front, x_key, x_label, title, best):
        if s[0] == "line":
            cv2.line(image, (int(s[1]), int(s[2])), (int(s[3]), int(s[4])), _bgr(s[5]), 1)
        elif s[0] == "poly":
            pts = np.array([[int(round(x)), int(round(y))] for x, y in s[1]], np.int32)
            cv2.polylines(image, [pts.reshape(-1, 1, 2)], False, _bgr(s[2]), 2, cv2.LINE_AA)
        elif s[0] == "circle":
            _, cx, cy, r, color, filled = s
            cv2.circle(image, (int(round(cx)), int(round(cy))), r, _bgr(color),
                       -1 if filled else 2, cv2.LINE_AA)
        else:
            _, x, y, text, anchor, color, size, vertical = s
            scale = 0.4 * size / 12.0
            (tw, th), base = cv2.getTextSize(text, font, scale, 1)
            if vertical:   # drawn on its own strip, turned a quarter to the left
                strip = np.full((th + base + 2, tw + 2, 3), 255, np.uint8)
                cv2.putText(strip, text, (1, th + 1), font, scale, _bgr(color), 1, cv2.LINE_AA)
                strip = cv2.rotate(strip, cv2.ROTATE_90_COUNTERCLOCKWISE)
                top = max(0, int(y - strip.shape[0] / 2))
                left = max(0, int(x - strip.shape[1] / 2))
                h, w = strip.shape[:2]
                image[top:top + h, left:left + w] = strip[:H - top, :W - left]
                continue
            shift = {"start": 0, "middle": tw / 2.0, "end": tw}[anchor]
            cv2.putText(image, text, (int(x - shift), int(y)), font, scale, _bgr(color), 1,
                        cv2.LINE_AA)
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise RuntimeError("OpenCV could not encode the plot as PNG")
    return encoded.tobytes()


def write_plot(path: str, results: List[Dict[str, Any]], front: List[Dict[str, Any]],
               x_key: str, x_label: str, title: str,
               best: Optional[Dict[str, Any]] = None) -> str:
    """Write the figure to `path`: SVG when it ends with .svg, else PNG. Returns the format."""
    if path.lower().endswith(".svg"):
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(svg_plot(results, front, x_key, x_label, title, best) + "\n")
        return "SVG"
    data = png_plot(results, front, x_key, x_label, title, best)
    with open(path, "wb") as handle:
        handle.write(data)
    return "PNG"
