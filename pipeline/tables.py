"""The columns of the result tables and the rows derived from them (the mean row), shared by
the printed tables and CSVs (``pipeline.results``) and the HTML report (``pipeline.report``)."""
import numpy as np

METRIC_COLUMNS = ["image_auroc", "pixel_auroc", "au_pro", "au_pro_05", "seg_f1", "au_spro",
                  "au_spro_logical", "au_spro_structural", "paper_pro", "paper_roc"]
VERDICT_COLUMNS = ["threshold", "precision", "recall", "f1", "fpr", "tp", "fp", "fn", "tn"]
COUNT_COLUMNS = ["n_test", "n_defect", "n_pixel_images", "tp", "fp", "fn", "tn"]
TYPE_COLUMNS = ["category", "defect", "n", "n_mask", "image_auroc", "recall", "mean_score"]
IMAGE_COLUMNS = ["path", "defect", "label", "has_mask", "score", "verdict"]


def metric_columns(rows):
    """The metric columns present in ``rows``, in a fixed order (sPRO of other anomaly types
    than MVTec LOCO's after the known ones)."""
    extra = sorted({k for r in rows for k in r if k.startswith("au_spro_")} -
                   set(METRIC_COLUMNS))
    return [c for c in METRIC_COLUMNS + extra if any(r.get(c) is not None or c in r
                                                    for r in rows)]


def mean_row(rows):
    """Means of the metrics, sums of the counts (over the categories that have them)."""
    out = {"category": "mean"}
    for col in metric_columns(rows) + VERDICT_COLUMNS + COUNT_COLUMNS + ["fit_seconds",
                                                                         "eval_seconds"]:
        vals = [r[col] for r in rows if r.get(col) is not None]
        if vals and col != "threshold":
            out[col] = int(np.sum(vals)) if col in COUNT_COLUMNS else float(np.mean(vals))
    return out


