"""One self-contained HTML page per run: the metrics table, and per category the ROC and PRO
curves, the score histograms with the threshold, and the worst false positives and false
negatives with their heat maps. Figures are inline PNGs (data: URIs): the page is one file that
opens anywhere, with no link to break."""
import base64
import html
import io
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from utils import write_text  # noqa: E402

from .tables import VERDICT_COLUMNS, mean_row, printed_columns  # noqa: E402

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1150px; color: #222; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; padding-top: .6em; }
table { border-collapse: collapse; margin: .6em 0 1.2em; font-size: .9em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: right; }
th:first-child, td:first-child { text-align: left; } th { background: #f3f3f3; }
tr.mean td { font-weight: bold; } .note { color: #555; font-size: .9em; }
.warn { background: #fff3cd; border: 1px solid #e0b252; padding: .6em .9em; }
img { max-width: 100%; display: block; margin: .4em 0; } nav a { margin-right: 1em; }
"""


def _png(fig):
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _fmt(v):
    if v is None:
        return "n/a"
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return str(int(v))
    if isinstance(v, float):
        return f"{v:.4f}"
    return html.escape(str(v))


def _table(rows, cols, mean=None):
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(r.get(c))}</td>" for c in cols) + "</tr>"
                   for r in rows)
    if mean is not None:
        body += "<tr class='mean'>" + "".join(f"<td>{_fmt(mean.get(c))}</td>"
                                               for c in cols) + "</tr>"
    return f"<table><tr>{head}</tr>{body}</table>"


def _curves_figure(res):
    c = res.curves
    panels = [("image ROC", c.get("image_roc"), "FPR (images)", "TPR"),
              ("pixel ROC", c.get("pixel_roc"), "FPR (pixels)", "TPR"),
              ("PRO (FPR <= 0.3)", c.get("pro"), "FPR (pixels)", "per-region overlap")]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
    for ax, (title, curve, xl, yl) in zip(axes, panels):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xl, fontsize=9)
        ax.set_ylabel(yl, fontsize=9)
        if curve is None:
            ax.text(0.5, 0.5, "n/a", ha="center", va="center", transform=ax.transAxes)
        else:
            ax.plot(curve[0], curve[1], lw=1.5)
            if "ROC" in title:
                ax.plot([0, 1], [0, 1], ls=":", c="grey", lw=1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    return _png(fig)


def _histogram_figure(res):
    s = res.curves["scores"]
    thr = res.row.get("threshold")
    fig, ax = plt.subplots(figsize=(7, 3))
    values = s["normal"] + s["defect"]
    bins = np.linspace(min(values), max(values + ([thr] if thr is not None else [])), 30)
    ax.hist(s["normal"], bins=bins, alpha=0.6, label=f"normal ({len(s['normal'])})",
            color="tab:blue")
    if s["defect"]:
        ax.hist(s["defect"], bins=bins, alpha=0.6, label=f"defective ({len(s['defect'])})",
                color="tab:red")
    if thr is not None:
        ax.axvline(thr, color="k", ls="--", lw=1.5, label=f"threshold {thr:.3g}")
    ax.set_xlabel("image score (max of the anomaly map)", fontsize=9)
    ax.set_ylabel("test images", fontsize=9)
    ax.legend(fontsize=8)
    return _png(fig)


def _examples_figure(items, title, threshold, display):
    """Each item's image and overlay at the image's own aspect ratio, the ground truth
    outlined (green) on defective images."""
    from visualize import pixel_aspect
    fig, axes = plt.subplots(2, len(items), figsize=(2.6 * len(items), 5.4), squeeze=False)
    vmin, vmax = display
    if vmin is None:                                    # no fixed scale: one for the figure
        vmin = min(float(np.nanmin(it[2])) for it in items)
        vmax = max(float(np.nanmax(it[2])) for it in items)
    for j, (rec, image, amap, gt, scored_hw) in enumerate(items):
        pa = pixel_aspect(amap.shape, scored_hw)
        axes[0, j].imshow(image, aspect=pa)
        axes[0, j].set_title(f"{rec['defect']}/{rec['path'].rsplit('/', 1)[-1]}", fontsize=7)
        axes[1, j].imshow(image, aspect=pa)
        axes[1, j].imshow(amap, cmap="jet", alpha=0.5, vmin=vmin, vmax=vmax, aspect=pa)
        if gt is not None and gt.any():
            axes[1, j].contour(gt, levels=[0.5], colors="lime", linewidths=1.0)
        axes[1, j].set_title(f"score {rec['score']:.3g} ({rec['verdict']})", fontsize=8)
        for ax in axes[:, j]:
            ax.axis("off")
    fig.suptitle(title + ("" if threshold is None else f"; threshold {threshold:.3g}") +
                 ("; green: ground truth" if any(it[3] is not None for it in items) else ""),
                 fontsize=10)
    return _png(fig)


def _threshold_note(row):
    if row.get("threshold") is None:
        return "No threshold (fitted with --holdout 0): no verdicts."
    return (f"Image threshold {row['threshold']:.4g}, pixel threshold "
            f"{row['pixel_threshold']:.4g}: {html.escape(str(row.get('threshold_rule')))}.")


def _category_section(res):
    cat = res.row["category"]
    parts = [f"<h2 id='{html.escape(cat)}'>{html.escape(cat)}</h2>",
             f"<p class='note'>{res.row['n_test']} test images ({res.row['n_defect']} "
             f"defective); pixel metrics on {res.row['n_pixel_images']} images. "
             + _threshold_note(res.row) + "</p>",
             f"<img alt='curves {html.escape(cat)}' src='{_curves_figure(res)}'>",
             f"<img alt='scores {html.escape(cat)}' src='{_histogram_figure(res)}'>"]
    display = res.curves.get("display") or (None, None)
    for kind, title in (("false_positive", "highest-scoring normal images (false positives "
                                           "when above the threshold)"),
                        ("false_negative", "lowest-scoring defective images (false negatives "
                                           "when below the threshold)")):
        items = res.examples.get(kind) or []
        if items:
            src = _examples_figure(items, title, res.row.get("threshold"), display)
            parts.append(f"<img alt='{kind} {html.escape(cat)}' src='{src}'>")
    if res.types:
        parts.append(_table(res.types, ["defect", "n", "n_mask", "image_auroc", "recall",
                                        "mean_score"]))
    return "\n".join(parts)


def _weights_warning(info):
    """A banner when the backbone's weights are random: the figures show that the pipeline
    works, not what ImageNet features give."""
    source = str((info or {}).get("backbone weights") or "")
    if not source.startswith("random:"):
        return ""
    return ("<p class='warn'><b>Random backbone weights</b> (" + html.escape(source) + "): "
            "these figures show that the pipeline works on this data, not what ImageNet "
            "weights achieve. Fit without --no-pretrained for meaningful results.</p>")


def write_report(path, results, info=None):
    """Write the report of a run's ``CategoryResult``s to ``path`` (atomically); return it."""
    rows = [r.row for r in results]
    metric_cols = ["category", "n_test", "n_pixel_images"] + \
        [c for c in printed_columns(rows) if any(r.get(c) is not None for r in rows)]
    facts = "".join(f"<li>{html.escape(str(k))}: {html.escape(str(v))}</li>"
                    for k, v in (info or {}).items())
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'>",
             "<title>OrthoAD-Paddle evaluation report</title>", f"<style>{_CSS}</style>",
             "</head><body>", "<h1>OrthoAD-Paddle evaluation report</h1>",
             f"<ul class='note'><li>written {time.strftime('%Y-%m-%d %H:%M:%S')}</li>{facts}"
             "</ul>", _weights_warning(info),
             "<nav>" + "".join(f"<a href='#{html.escape(r['category'])}'>"
                               f"{html.escape(r['category'])}</a>" for r in rows) + "</nav>",
             "<h2 id='metrics'>Metrics</h2>", _table(rows, metric_cols, mean_row(rows)),
             "<p class='note'>au_pro: official MVTec AD AU-PRO (FPR limit 0.3); au_pro_05: the "
             "same up to FPR 0.05 (MVTec AD 2's limit); seg_f1: pixel F1 at the pixel "
             "threshold, pooled over all pixels (MVTec AD 2's SegF1); image_auroc_* and "
             "au_spro_05_*: MVTec LOCO's image AUROC and saturated PRO up to FPR 0.05 per "
             "subset (logical, structural, their mean) as MVTec's evaluation computes them "
             "(results.csv also has the limits 0.01, 0.1, 0.3 and 1); paper_pro / "
             "paper_roc: the OrthoAD paper code's protocol. n/a: undefined for this data.</p>"]
    if any(r.get("threshold") is not None for r in rows):
        parts += ["<h2 id='verdicts'>Verdicts at the threshold</h2>",
                  _table(rows, ["category"] + VERDICT_COLUMNS, mean_row(rows))]
    parts += [_category_section(res) for res in results]
    parts.append("</body></html>")
    write_text(path, "\n".join(parts))
    return path
