"""MVTec LOCO AD's metrics as MVTec's evaluation code (``evaluate_experiment.py``, version 2.0)
computes them from the original-size maps (the ones ``--save_maps`` writes for it):

* per anomaly folder (``logical_anomalies``, ``structural_anomalies``), with the good test
  images added to it: AU-sPRO at the integration limits 0.01, 0.05, 0.1, 0.3 and 1.0
  (``metrics.SaturatedPRO``) and the image AUROC (``metrics.loco_image_auroc``, the image score
  being the maximum of the original-size map, as the official code reads it from the TIFF);
* their ``mean`` over the folders.

Columns: ``au_spro_<LL>_<subset>`` with LL the limit in hundredths (01, 05, 10, 30, 100; 05 is
the LOCO paper's headline) and subset ``logical``, ``structural`` or ``mean``;
``image_auroc_<subset>``. Saturation thresholds are pixel counts of the original image, so
sPRO is always computed at the original size, whatever ``--eval_size``.
"""
import numpy as np

import metrics
from utils import UserError

LIMIT_NAMES = {limit: f"{round(limit * 100):02d}" for limit in metrics.SPRO_LIMITS}
HEADLINE = "au_spro_05_mean"


def subset_name(folder):
    """'logical_anomalies' -> 'logical'."""
    return folder.split("_")[0]


class LocoMetrics:
    """Collects the original-size maps' sPRO pixels and peaks of one category's test set.

    Args:
        defects: the category's ``defects_config.json`` ({pixel value: entry}).
        pixel: also the sPRO (``--eval_PRO``); else only the image AUROCs.
    """

    def __init__(self, defects, pixel=True):
        self.defects = defects
        self.spro = metrics.SaturatedPRO() if pixel else None
        self.peaks = {}

    def add(self, sample, channels, full):
        """One scored test sample: its ground-truth files as (pixel value, bool [H0, W0]) and
        its original-size map [H0, W0]."""
        peak = float(np.nanmax(full)) if np.isfinite(full).any() else float("nan")
        self.peaks.setdefault(sample.defect, []).append(peak)
        if self.spro is None or (sample.label == 1 and not channels):
            return                     # an anomalous image without ground truth: image metric only
        defects = []
        for path, (value, mask) in zip(sample.masks, channels or ()):
            entry = self.defects.get(value)
            if entry is None:
                raise UserError(f"ground-truth file '{path}' marks its defect with pixel value "
                                f"{value}, which defects_config.json does not list: fix the "
                                "file or the configuration")
            defects.append((mask, entry["saturation_threshold"], entry["relative_saturation"]))
        self.spro.add(full, sample.defect, defects)

    def rows(self):
        """{column: value} for results.csv (None where undefined)."""
        folders = sorted(k for k in self.peaks if k != "good")
        good = self.peaks.get("good", [])
        out, per = {}, {}
        for folder in folders:
            name = subset_name(folder)
            per.setdefault("image_auroc", []).append(
                out.setdefault(f"image_auroc_{name}",
                               metrics.loco_image_auroc(good, self.peaks[folder])))
            if self.spro is not None:
                for limit, value in self.spro.area(("good", folder)).items():
                    col = f"au_spro_{LIMIT_NAMES[limit]}"
                    out[f"{col}_{name}"] = value
                    per.setdefault(col, []).append(value)
        for col, values in per.items():
            out[f"{col}_mean"] = None if not values or any(v is None for v in values) \
                else float(np.mean(values))
        return out
