"""Result rows of a run as a printed table and as results.csv."""
import math

import numpy as np

from utils import write_csv

METRIC_COLUMNS = ["image_auroc", "pixel_auroc", "au_pro", "paper_pro", "paper_roc"]


def mean_row(rows):
    out = {"category": "mean"}
    for col in METRIC_COLUMNS + ["n_test", "fit_seconds", "eval_seconds"]:
        vals = [r[col] for r in rows if r.get(col) is not None]
        if vals:
            out[col] = float(np.mean(vals)) if col not in ("n_test",) else int(np.sum(vals))
    return out


def results_table(rows):
    """Rows (with a mean row) as a printable fixed-width table; undefined values as n/a."""
    cols = ["category"] + [c for c in METRIC_COLUMNS if any(c in r for r in rows)]
    lines = ["  ".join(f"{c:>12}" for c in cols)]
    for r in rows + [mean_row(rows)]:
        cells = []
        for c in cols:
            v = r.get(c)
            cells.append(f"{v:>12}" if isinstance(v, str) else
                         f"{'n/a':>12}" if v is None or (isinstance(v, float) and math.isnan(v))
                         else f"{v:>12.4f}")
        lines.append("  ".join(cells))
    return "\n".join(lines)


def write_results(path, rows):
    """CSV with a row per category and a mean row (undefined metrics left empty)."""
    cols = ["category", "n_test"] + [c for c in METRIC_COLUMNS if any(c in r for r in rows)]
    cols += [c for c in ("unscored_defect_frac", "fit_seconds", "eval_seconds")
             if any(c in r for r in rows)]
    clean = [{k: ("" if v is None else v) for k, v in r.items()} for r in rows + [mean_row(rows)]]
    write_csv(path, clean, cols)
    return path
