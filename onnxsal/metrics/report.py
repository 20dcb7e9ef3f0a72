"""What `onnxsal evaluate` writes: evaluation.json (every figure), evaluation.md and evaluation.html (a table;
the HTML page shows the plots too), and PNG plots (deletion / insertion / pixel flipping / ROAD curves per
image; randomisation similarity per layer), drawn with Pillow."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import HEADLINE, REFERENCES

COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def table_parts(evaluation) -> tuple[list, list, list, list]:
    """(header, rows of cells, notes, references): methods x metrics, the headline figure averaged over images
    (arrow: which way is better)."""
    metrics = evaluation.metrics
    head = ["method"] + [f"{m} {HEADLINE[m][0]} {'↑' if HEADLINE[m][1] else '↓'}" for m in metrics if m != "randomisation"]
    if "randomisation" in metrics:
        head += ["randomisation: output layer ↓", "randomisation: all checked ↓", "passes"]
    rows = []
    for method in evaluation.methods:
        cells = [method]
        for metric in metrics:
            if metric == "randomisation":
                continue
            try:
                cells.append(f"{evaluation.figure(method, metric):.3f}")
            except KeyError:
                cells.append("")
        if "randomisation" in metrics:
            recs = [r for r in evaluation.records if r["method"] == method and r["metric"] == "randomisation"]
            top = np.mean([r["figures"]["spearman_abs_output_layer"] for r in recs])
            end = np.mean([r["figures"]["spearman_abs"] for r in recs])
            verdicts = [r["figures"]["passes"] for r in recs]
            cells += [f"{top:.2f}", f"{end:.2f}", f"{sum(bool(v) for v in verdicts)}/{len(verdicts)}"]
        rows.append(cells)
    notes = [f"{len(evaluation.images)} image(s); {evaluation.target}; {evaluation.model}. "
             "Figures are means over images; settings and per-image values are in evaluation.json."]
    if "randomisation" in metrics:
        notes.append("randomisation: Spearman correlation of |map| with the original map after randomising the output "
                     "layer alone, and after cascading randomisation down to the lowest checked layer; passes: images "
                     "where both are below 0.5 in absolute value (Adebayo et al. 2018; our threshold). SSIM and HOG "
                     "similarities per layer are in evaluation.json and the plots.")
    references = [f"{m}: {REFERENCES[m]}" for m in metrics]
    return head, rows, notes, references


def markdown_table(evaluation) -> str:
    head, rows, notes, references = table_parts(evaluation)
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    lines += ["| " + " | ".join([f"`{cells[0]}`", *cells[1:]]) + " |" for cells in rows]
    lines.append("")
    lines += notes
    lines.append("")
    lines += [f"- {r}" for r in references]
    return "\n".join(lines) + "\n"


def html_report(evaluation, pictures: list[str] = ()) -> str:
    """A standalone HTML page: the table, its notes and references, and the plots (relative links)."""
    from html import escape

    head, rows, notes, references = table_parts(evaluation)
    out = ["<!DOCTYPE html>", '<html><head><meta charset="utf-8"><title>onnxsal evaluation</title>',
           "<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}"
           "th,td{border:1px solid #bbb;padding:3px 8px}td{text-align:right}td:first-child{text-align:left;"
           "font-family:monospace}th{background:#eee}img{max-width:100%;margin:.5em 0}</style></head><body>",
           "<h1>onnxsal evaluation</h1>", "<table>", "<tr>" + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr>"]
    out += ["<tr>" + "".join(f"<td>{escape(c)}</td>" for c in cells) + "</tr>" for cells in rows]
    out.append("</table>")
    out += [f"<p>{escape(n)}</p>" for n in notes]
    out.append("<ul>" + "".join(f"<li>{escape(r)}</li>" for r in references) + "</ul>")
    out += [f'<p><img src="{escape(p)}" alt="{escape(p)}"></p>' for p in pictures]
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _font(size):
    from ..viz import _font as font

    return font(size)


def nice_ticks(lo: float, hi: float, bins: int = 4) -> np.ndarray:
    """Round tick values covering [lo, hi]: the smallest step of 1, 2, 2.5, 5 or 10 times a power of ten that needs
    at most `bins` intervals, from floor(lo / step) to ceil(hi / step) steps (the steps of matplotlib's MaxNLocator,
    which also allows a tick or two beyond the data). The axis then runs from the first tick to the last, instead of
    labelling the data's extremes (0.0037 .. 0.7213 -> 0, 0.2, .., 0.8)."""
    if not (np.isfinite(lo) and np.isfinite(hi)) or hi <= lo:
        hi = lo + 1.0 if np.isfinite(lo) else 1.0
        lo = lo if np.isfinite(lo) else 0.0
    raw = (hi - lo) / bins
    power = 10.0 ** np.floor(np.log10(raw))
    for factor in (1, 2, 2.5, 5, 10, 20):
        step = factor * power
        first, last = np.floor(lo / step + 1e-9), np.ceil(hi / step - 1e-9)
        if last - first <= bins:
            return np.round(np.arange(first, last + 1) * step, 12)
    return np.linspace(lo, hi, bins + 1)


def _tick_label(value: float, ticks: np.ndarray) -> str:
    """As many decimals as the step needs (0.25 -> 2, 0.2 -> 1, 250 -> 0)."""
    step = float(np.min(np.diff(ticks))) if len(ticks) > 1 else 1.0
    decimals = 0
    while decimals < 6 and abs(round(step, decimals) - step) > 1e-9 * max(1.0, abs(step)):
        decimals += 1
    return f"{value:.{decimals}f}"


def line_panels(panels: list[dict], title: str = "", panel_size=(420, 300)):
    """Side-by-side line plots. panel: {"title", "xlabel", "ylabel", "series": [(label, xs, ys)], "ylim": (lo, hi)?}."""
    from PIL import Image, ImageDraw

    pw, ph = panel_size
    left, right, top, bottom = 58, 12, 30, 42
    title_h = 26 if title else 0
    labels = list(dict.fromkeys(label for p in panels for label, _, _ in p["series"]))
    legend_h = 18 * ((len(labels) + 2) // 3) + 8
    width = len(panels) * pw
    sheet = Image.new("RGB", (width, title_h + ph + legend_h), "white")
    d = ImageDraw.Draw(sheet)
    if title:
        d.text((8, 5), title, fill="black", font=_font(15))
    colour = {label: COLOURS[k % len(COLOURS)] for k, label in enumerate(labels)}
    for p_index, panel in enumerate(panels):
        ox, oy = p_index * pw, title_h
        x0, y0, x1, y1 = ox + left, oy + top, ox + pw - right, oy + ph - bottom
        xs_all = np.concatenate([np.asarray(xs, float) for _, xs, _ in panel["series"]]) if panel["series"] else np.zeros(1)
        ys_all = np.concatenate([np.asarray(ys, float) for _, _, ys in panel["series"]]) if panel["series"] else np.zeros(1)
        ys_all = ys_all[np.isfinite(ys_all)] if np.isfinite(ys_all).any() else np.zeros(1)
        xlo, xhi = float(xs_all.min()), float(xs_all.max())
        if panel.get("ylim"):
            ylo, yhi = panel["ylim"]
            if yhi <= ylo:
                yhi = ylo + 1.0
            yticks = nice_ticks(ylo, yhi)
            yticks = yticks[(yticks >= ylo - 1e-12) & (yticks <= yhi + 1e-12)]
        else:  # the axis spans round ticks around the data
            yticks = nice_ticks(float(ys_all.min()), float(ys_all.max()))
            ylo, yhi = float(yticks[0]), float(yticks[-1])
        if xhi <= xlo:
            xhi = xlo + 1.0

        def to_px(xv, yv):
            return (x0 + (xv - xlo) / (xhi - xlo) * (x1 - x0), y1 - (yv - ylo) / (yhi - ylo) * (y1 - y0))

        d.text((x0, oy + 8), panel.get("title", ""), fill="black", font=_font(13))
        for t in yticks:
            _, py = to_px(xlo, t)
            d.line([(x0, py), (x1, py)], fill=(230, 230, 230))
            d.text((ox + 4, py - 7), _tick_label(t, yticks), fill=(60, 60, 60), font=_font(11))
        ticks = panel.get("xticks") or [(t, f"{t:.2f}") for t in np.linspace(xlo, xhi, 5)]
        for t, text in ticks:
            px, _ = to_px(t, ylo)
            d.line([(px, y1), (px, y1 + 4)], fill="black")
            d.text((px - 3 * len(text), y1 + 6), text, fill=(60, 60, 60), font=_font(11))
        d.rectangle([x0, y0, x1, y1], outline="black")
        d.text(((x0 + x1) // 2 - 3 * len(panel.get("xlabel", "")), y1 + 22), panel.get("xlabel", ""), fill="black",
               font=_font(12))
        d.text((x0 + 4, y0 + 2), panel.get("ylabel", ""), fill=(90, 90, 90), font=_font(11))
        for label, xs, ys in panel["series"]:
            pts = [to_px(float(a), float(b)) for a, b in zip(xs, ys) if np.isfinite(b)]
            if len(pts) > 1:
                d.line(pts, fill=colour[label], width=2)
            for px, py in pts if len(pts) <= 12 else []:
                d.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour[label])
    for k, label in enumerate(labels):
        r, c = divmod(k, 3)
        lx, ly = 10 + c * (width // 3), title_h + ph + 4 + 18 * r
        d.rectangle([lx, ly + 5, lx + 18, ly + 9], fill=colour[label])
        d.text((lx + 24, ly), label, fill="black", font=_font(12))
    return sheet


def curve_plot(evaluation, image):
    """Deletion and insertion (and MoRF / LeRF) curves of one image, one line per method."""
    panels = []
    for metric, key, name in (("deletion", "curve", "deletion"), ("insertion", "curve", "insertion"),
                              ("pixel_flipping", "morf", "MoRF"), ("pixel_flipping", "lerf", "LeRF")):
        rows = [r for r in evaluation.records if r["image"] == image and r["metric"] == metric]
        if not rows:
            continue
        series = []
        for r in rows:
            y = np.asarray(r["curves"][key] if key in ("morf", "lerf") else r["curve"], float)
            series.append((r["method"], np.linspace(0, 1, len(y)), y))
        ylabel = rows[0]["settings"].get("score", "score")
        fill = rows[0]["settings"].get("fill")
        panels.append({"title": f"{name} (fill {fill})", "xlabel": "fraction of pixels perturbed", "ylabel": ylabel,
                       "series": series})
    for key, name in (("morf", "ROAD MoRF"), ("lerf", "ROAD LeRF")):
        rows = [r for r in evaluation.records if r["image"] == image and r["metric"] == "road"]
        if rows:
            series = [(r["method"], np.asarray(r["curves"]["percentages"], float), np.asarray(r["curves"][key], float))
                      for r in rows]
            panels.append({"title": f"{name} (noisy linear imputation)", "xlabel": "fraction of pixels removed",
                           "ylabel": rows[0]["settings"].get("score", "score"), "series": series})
    if not panels:
        return None
    cls = next(r["class"] for r in evaluation.records if r["image"] == image)
    return line_panels(panels, title=f"{image}: class {cls}; AUCs in evaluation.md / .json")


def randomisation_plot(evaluation, image):
    """Similarity to the original map per randomised layer (output layer first), one line per method."""
    rows = [r for r in evaluation.records if r["image"] == image and r["metric"] == "randomisation"]
    if not rows:
        return None
    panels = []
    for mode in rows[0]["layers"]:
        for key, what in (("spearman_abs", "Spearman |map|"), ("ssim", "SSIM |map|"), ("hog", "HOG Pearson")):
            series = []
            low = -0.2
            checkpoints = rows[0]["layers"][mode]
            for r in rows:
                ys = [1.0] + [c[key] for c in r["layers"][mode]]
                series.append((r["method"], np.arange(len(ys)), ys))
                low = min(low, *ys)
            ticks = [(0, "orig")] + [(k + 1, str(c["index"])) for k, c in enumerate(checkpoints)]
            panels.append({"title": f"{mode}: {what}", "xlabel": "randomised down to layer #", "ylabel": what,
                           "series": series, "ylim": (max(-1.0, np.floor(low * 5) / 5), 1.0),
                           "xticks": ticks})
    return line_panels(panels, title=f"{image}: randomisation (Adebayo et al. 2018), layers numbered from the input")


def write(evaluation, out: Path, stems: dict | None = None) -> list[Path]:
    """evaluation.json, evaluation.md and the plots in `out`; returns the paths written."""
    from ..files import make_folder, write_output
    from ..viz import save_png

    out = make_folder(out)
    written = []
    path = out / "evaluation.json"
    write_output(path, (json.dumps(evaluation.to_dict(), indent=1) + "\n").encode())
    written.append(path)
    path = out / "evaluation.md"
    write_output(path, evaluation.table().encode())
    written.append(path)
    pictures = []
    for image in evaluation.images:
        stem = (stems or {}).get(image, str(image))
        for suffix, draw in (("curves", curve_plot), ("randomisation", randomisation_plot)):
            picture = draw(evaluation, image)
            if picture is not None:
                path = out / f"{stem}_{suffix}.png"
                save_png(picture, path)
                written.append(path)
                pictures.append(path.name)
    path = out / "evaluation.html"
    write_output(path, html_report(evaluation, pictures).encode())
    written.append(path)
    return written
