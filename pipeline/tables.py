"""The columns of the result tables and the rows derived from them (the mean row), shared by
the printed tables and CSVs (``pipeline.results``) and the HTML report (``pipeline.report``)."""
import numpy as np

METRIC_COLUMNS = ["image_auroc", "pixel_auroc", "au_pro", "au_pro_05", "seg_f1",
                  "image_auroc_logical", "image_auroc_structural", "image_auroc_mean",
                  "au_spro_05_logical", "au_spro_05_structural", "au_spro_05_mean",
                  "paper_pro", "paper_roc"]
# MVTec LOCO's columns per subset (pipeline.loco): the 0.05 ones above, the other limits after
SUBSET_PREFIXES = ("au_spro_", "image_auroc_")
VERDICT_COLUMNS = ["threshold", "precision", "recall", "f1", "fpr", "tp", "fp", "fn", "tn"]
COUNT_COLUMNS = ["n_test", "n_defect", "n_pixel_images", "tp", "fp", "fn", "tn"]
TYPE_COLUMNS = ["category", "defect", "n", "n_mask", "image_auroc", "recall", "mean_score"]
IMAGE_COLUMNS = ["path", "defect", "label", "has_mask", "score", "verdict"]


def metric_columns(rows):
    """The metric columns present in ``rows``, in a fixed order (MVTec LOCO's other limits and
    subsets after the known ones)."""
    extra = sorted({k for r in rows for k in r if k.startswith(SUBSET_PREFIXES)} -
                   set(METRIC_COLUMNS), key=_limit_order)
    return [c for c in METRIC_COLUMNS + extra if any(r.get(c) is not None or c in r
                                                    for r in rows)]


def _limit_order(col):
    """au_spro_01_x < au_spro_10_x < au_spro_30_x < au_spro_100_x (by limit, then subset)."""
    parts = col.split("_")
    limit = int(parts[2]) if len(parts) > 3 and parts[2].isdigit() else 0
    return parts[0], limit, col


def printed_columns(rows):
    """The columns of the printed table: ``metric_columns`` less MVTec LOCO's limits other than
    the headline 0.05 (results.csv has them all)."""
    return [c for c in metric_columns(rows)
            if not (c.startswith("au_spro_") and not c.startswith("au_spro_05_"))]


def mean_row(rows):
    """Means of the metrics, sums of the counts (over the categories that have them)."""
    out = {"category": "mean"}
    for col in metric_columns(rows) + VERDICT_COLUMNS + COUNT_COLUMNS + ["fit_seconds",
                                                                         "eval_seconds"]:
        vals = [r[col] for r in rows if r.get(col) is not None]
        if vals and col != "threshold":
            out[col] = int(np.sum(vals)) if col in COUNT_COLUMNS else float(np.mean(vals))
    return out


