"""The live view's overlay: what it says (predictions, model, fps, power), and its drawing."""

from typing import Any, Dict, List, Optional, Tuple

import numpy as np

MIN_WIDTH = 640         # frames are scaled to MIN_WIDTH..MAX_WIDTH for drawing and encoding
MAX_WIDTH = 960
TOP_N = 3
PANEL_BGR = (24, 24, 24)
TEXT_BGR = (255, 255, 255)
BAR_BGR = (80, 200, 120)
NA = "n/a"


def lookup(data: Optional[Dict[str, Any]], *path: str) -> Any:
    """data[path[0]][path[1]]..., or None where a level is missing or not a dict."""
    node = data  # type: Any
    for key in path:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def format_number(value: Any, fmt: str, unit: str = "") -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return NA
    return fmt.format(value) + unit


def overlay_text(payload: Optional[Dict[str, Any]], telemetry: Optional[Dict[str, Any]],
                 model: Optional[Dict[str, Any]], fps: Optional[float]
                 ) -> Tuple[List[Tuple[str, float]], List[str]]:
    """(top predictions as (text, score), info lines) for the overlay and the page.

    Power and energy come from telemetry (`power.total_w`, `energy.inferences_per_joule`) and
    read "n/a" where this machine has no power sensor.
    """
    top = []  # type: List[Tuple[str, float]]
    for item in (lookup(payload, "top") or [])[:TOP_N]:
        score = item.get("score") if isinstance(item, dict) else None
        score = float(score) if isinstance(score, (int, float)) else 0.0
        label = item.get("label") if isinstance(item, dict) else None
        if label is None and isinstance(item, dict):
            label = "class {}".format(item.get("index"))
        top.append(("{} {:.1f}%".format(label, score * 100.0), score))
    ref = lookup(payload, "model")
    if not ref and model:
        ref = "{}@{}".format(model.get("name"), model.get("version"))
    backend = "{} {}".format(lookup(model, "backend") or NA, lookup(model, "precision") or NA)
    lines = [
        "{}  {}".format(ref or NA, backend),
        "{} fps  latency {}".format(format_number(fps, "{:.1f}"),
                                    format_number(lookup(payload, "latency_ms"), "{:.0f}", " ms")),
        "power {}  energy {}".format(
            format_number(lookup(telemetry, "power", "total_w"), "{:.2f}", " W"),
            format_number(lookup(telemetry, "energy", "inferences_per_joule"), "{:.1f}",
                          " inf/J")),
    ]
    return top, lines


def footer_text(payload: Optional[Dict[str, Any]], telemetry: Optional[Dict[str, Any]],
                fps: Optional[float]) -> str:
    """The window's one-line footer: fps, inference and end-to-end ms (p50 of the last
    telemetry window, else this frame's latency), power and inferences per joule."""
    e2e = lookup(telemetry, "latency_ms", "end_to_end", "p50")
    if e2e is None:
        e2e = lookup(payload, "latency_ms")
    watts = lookup(telemetry, "energy", "mean_w")
    if watts is None:
        watts = lookup(telemetry, "power", "total_w")
    return "{} fps | infer {} | e2e {} | {} | {}".format(
        format_number(fps, "{:.1f}"),
        format_number(lookup(telemetry, "latency_ms", "infer", "p50"), "{:.1f}", " ms"),
        format_number(e2e, "{:.0f}", " ms"), format_number(watts, "{:.2f}", " W"),
        format_number(lookup(telemetry, "energy", "inferences_per_joule"), "{:.1f}",
                      " inf/J"))


def draw_footer(canvas: np.ndarray, text: str) -> None:
    """Write `text` on a dark strip along the bottom of `canvas` (in place)."""
    import cv2
    h, w = canvas.shape[:2]
    font = cv2.FONT_HERSHEY_SIMPLEX
    scale = max(0.4, min(0.6, w / 1600.0))
    strip = int(32 * scale) + 10
    region = canvas[h - strip:h, :]
    shade = np.empty_like(region)
    shade[:] = PANEL_BGR
    cv2.addWeighted(region, 0.25, shade, 0.75, 0, dst=region)
    cv2.putText(canvas, text, (10, h - strip // 2 + int(8 * scale)), font, scale, TEXT_BGR, 1,
                cv2.LINE_AA)


def fit_width(image: np.ndarray, min_width: int = MIN_WIDTH,
              max_width: int = MAX_WIDTH) -> np.ndarray:
    """A copy of `image` scaled so its width lies in [min_width, max_width]."""
    import cv2
    h, w = image.shape[:2]
    target = min(max(w, min_width), max_width)
    if target == w:
        return image.copy()
    scale = float(target) / w
    size = (target, max(1, int(round(h * scale))))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else
                      cv2.INTER_LINEAR)


def draw_overlay(image: np.ndarray, top: List[Tuple[str, float]], lines: List[str]
                 ) -> np.ndarray:
    """A new image: `image` scaled for display with a translucent panel at the top left holding
    the top predictions (with score bars) and the info lines. `image` is not modified."""
    import cv2
    canvas = fit_width(image)
    if canvas.ndim == 2:
        canvas = cv2.cvtColor(canvas, cv2.COLOR_GRAY2BGR)
    h, w = canvas.shape[:2]
    font = cv2.FONT_HERSHEY_SIMPLEX
    scale = max(0.45, min(0.8, w / 1200.0))
    thick = 1 if scale < 0.6 else 2
    line_h = int(32 * scale) + 6
    pad = 10
    texts = [t for t, _ in top] + lines
    text_w = max([cv2.getTextSize(t, font, scale, thick)[0][0] for t in texts] + [100])
    panel_w = min(w - 2 * pad, text_w + 2 * pad)
    panel_h = min(h - 2 * pad, line_h * len(texts) + 6 * len(top) + pad)
    x0, y0 = pad, pad
    region = canvas[y0:y0 + panel_h, x0:x0 + panel_w]
    shade = np.empty_like(region)
    shade[:] = PANEL_BGR
    cv2.addWeighted(region, 0.35, shade, 0.65, 0, dst=region)
    y = y0 + line_h - 4
    for text, score in top:
        cv2.putText(canvas, text, (x0 + pad, y), font, scale, TEXT_BGR, thick, cv2.LINE_AA)
        bar = int((panel_w - 2 * pad) * max(0.0, min(1.0, score)))
        cv2.rectangle(canvas, (x0 + pad, y + 4), (x0 + pad + max(bar, 1), y + 8), BAR_BGR,
                      cv2.FILLED)
        y += line_h + 6
    for text in lines:
        cv2.putText(canvas, text, (x0 + pad, y), font, scale * 0.85, TEXT_BGR, thick,
                    cv2.LINE_AA)
        y += line_h
    return canvas
