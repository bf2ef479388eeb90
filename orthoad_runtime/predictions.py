"""One image's result, the same for every engine and every caller (predict.py, infer.py, the
Python API, the service): score, verdict, thresholds, the anomaly map, the defect mask at the
image's own resolution and its regions.

Two thresholds, two rules, stated in every result: the VERDICT compares the image score (the
map's largest scored value) with the image threshold; the MASK and its REGIONS are the pixels
of the original-size map above the pixel threshold. With the hold-out or validation rule both
thresholds are one value, and the two agree but for a score that exceeds the threshold only
between pixels of the original grid; after a calibration on labelled images they are set
separately (image F1 or FPR, pixel F1 or FPR), so "anomalous, 0 regions" and "normal, 2
regions" both happen. ``agree`` says whether they do for this image.
"""
from dataclasses import dataclass

import numpy as np

from orthoad_runtime.ignore import original_map

OUTPUTS_VERSION = 2
VERDICT_RULE = ("anomalous when the image score (the largest scored value of the anomaly map) "
                "> image_threshold")
PATCHCORE_VERDICT_RULE = ("anomalous when the image score (PatchCore: the largest scored patch "
                          "distance to the memory bank, reweighted by the bank's neighbourhood "
                          "of its nearest feature, Eq. 7 of the paper) > image_threshold")
REGIONS_RULE = ("8-connected pixels of the map at the image's resolution that are > "
                "pixel_threshold")


def verdict(score, image_threshold):
    """``VERDICT_RULE``: 'anomalous', 'normal', or 'unknown' without a threshold."""
    if image_threshold is None:
        return "unknown"
    return "anomalous" if score > image_threshold else "normal"


def thresholds(meta):
    """(image threshold, pixel threshold) of a model's or deploy file's metadata (None if it
    has none); the pixel threshold defaults to the image threshold."""
    thr = meta.get("threshold") or {}
    image = thr.get("image")
    pixel = thr.get("pixel")
    return image, image if pixel is None else pixel


def regions(mask, full_map):
    """8-connected components of a bool mask [H0, W0] with their statistics on the original-size
    map: box [left, top, right, bottom) in pixels, area, peak and mean score; largest first.
    (SciPy is imported only when there is a region: its import is a fifth of a line PC's cold
    start.)"""
    if not mask.any():
        return []
    from scipy import ndimage
    lab, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=int))
    out = []
    for i, sl in enumerate(ndimage.find_objects(lab), start=1):
        inside = lab[sl] == i
        values = full_map[sl][inside]
        out.append({"box": [int(sl[1].start), int(sl[0].start), int(sl[1].stop),
                            int(sl[0].stop)],
                    "area": int(inside.sum()), "peak_score": float(np.nanmax(values)),
                    "mean_score": float(np.nanmean(values))})
    return sorted(out, key=lambda r: -r["area"])


@dataclass
class Prediction:
    """The result of one image.

    Attributes:
        path: the image file, or None for an array / PIL image.
        score: the image score (max of the scored map; PatchCore: its Eq. 7). relative_score:
            score / image threshold (comparable across categories; None without a threshold).
        verdict: 'anomalous', 'normal' or 'unknown' (no threshold), by ``VERDICT_RULE``.
        image_threshold, pixel_threshold: the thresholds used (None if the model has none).
        regions: list of {box, area, peak_score, mean_score}, largest first (``REGIONS_RULE``).
        anomaly_map: float32 [H, W] at the network input, NaN on ignored pixels.
        full_map: float32 [H0, W0] at the image's resolution, NaN where not scored.
        mask: bool [H0, W0] defect pixels (full_map > pixel_threshold).
        threshold_source: where the thresholds come from (holdout, validation, calibration,
            given).
        input_image: uint8 [H, W, 3] network input for figures (only if asked for).
        scored_hw: (height, width) of the scored part of the original image: figures draw the
            network's input and map at this aspect ratio, as the image is.
    """
    path: object
    score: float
    verdict: str
    image_threshold: object
    pixel_threshold: object
    regions: list
    anomaly_map: np.ndarray
    full_map: np.ndarray
    mask: np.ndarray
    threshold_source: object = None
    input_image: np.ndarray = None
    scored_hw: tuple = None
    verdict_rule: str = VERDICT_RULE

    @property
    def height(self):
        return int(self.full_map.shape[0])

    @property
    def width(self):
        return int(self.full_map.shape[1])

    @property
    def relative_score(self):
        t = self.image_threshold
        return None if t is None or t <= 0 else float(self.score / t)

    @property
    def agree(self):
        """Whether the verdict and the regions say the same (None without thresholds)."""
        if self.image_threshold is None or self.pixel_threshold is None:
            return None
        return (self.verdict == "anomalous") == bool(self.regions)

    def console_line(self):
        """One line for a terminal: the verdict, its score against the image threshold, and
        the regions; where the two disagree, why (the two thresholds)."""
        line = f"score {self.score:.4f}\t{self.verdict}\t{len(self.regions)} region(s)"
        if self.agree is False:
            t, p = self.image_threshold, self.pixel_threshold
            line += (f" (verdict: score {'>' if self.score > t else '<='} image threshold "
                     f"{t:.4g}; regions: pixels > pixel threshold {p:.4g})")
        return line

    def record(self):
        """The JSON-able result (what regions/<stem>.json holds and the service answers)."""
        import os
        return {"outputs_version": OUTPUTS_VERSION,
                "image": os.path.abspath(self.path) if self.path else None,
                "height": self.height, "width": self.width, "score": float(self.score),
                "relative_score": self.relative_score, "verdict": self.verdict,
                "image_threshold": self.image_threshold, "pixel_threshold": self.pixel_threshold,
                "threshold_source": self.threshold_source,
                "verdict_rule": self.verdict_rule, "regions_rule": REGIONS_RULE,
                "verdict_and_regions_agree": self.agree,
                "n_regions": len(self.regions),
                "largest_region_area": self.regions[0]["area"] if self.regions else 0,
                "unscored_pixels": int(np.isnan(self.full_map).sum()), "regions": self.regions}


def make_prediction(preprocess, amap, score, original_hw, thresholds, ignore=None, path=None,
                    threshold_source=None, input_image=None, verdict_rule=VERDICT_RULE):
    """A ``Prediction`` from the network's map [H, W] (NaN on ignored pixels) and score."""
    image_t, pixel_t = thresholds
    full = original_map(preprocess, amap, original_hw, ignore)
    mask = np.zeros(full.shape, dtype=bool) if pixel_t is None else \
        np.nan_to_num(full, nan=-np.inf) > pixel_t
    left, top, right, bottom = preprocess.scored_box(original_hw)
    return Prediction(path, float(score), verdict(score, image_t), image_t, pixel_t,
                      regions(mask, full), amap,
                      full, mask, threshold_source, input_image, (bottom - top, right - left),
                      verdict_rule)
