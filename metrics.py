"""Evaluation metrics as pure functions of NumPy arrays (no model, no Paddle).

Shapes: N test images, maps and masks [N, H, W] (or lists of N arrays [H_i, W_i] when the
images differ in size); labels and image scores [N].

* ``image_auroc``: scikit-learn's ROC AUC of the image scores.
* ``PixelSet``: the pixels of many maps, for the pixel metrics from ONE in-place sort of the
  scores (4 bytes per pixel, plus 8 per defect pixel):
  - ``auroc``: pixel ROC AUC, exact (the Mann-Whitney statistic with ties counted half, which
    is what scikit-learn's ``roc_auc_score`` computes);
  - ``au_pro``: the per-region overlap curve integrated up to a false positive rate limit,
    exactly as the official MVTec AD evaluation (v1.0) computes it, streamed in chunks;
  - ``f1_at``: the pixel F1 of the maps binarised at a threshold, counts pooled over all pixels
    (MVTec AD 2's SegF1);
  - ``f1_threshold`` / ``fpr_threshold``: pixel thresholds for calibration.
  ``pixel_auroc`` and ``au_pro`` are the same for a list of maps.
* ``SaturatedPRO`` / ``loco_image_auroc``: MVTec LOCO's AU-sPRO per subset of images and its
  image AUROC, as MVTec's evaluation code computes them.
* ``confusion`` / ``best_f1_threshold`` / ``fpr_threshold``: image verdicts at a threshold.
* ``paper_pro_roc``: the thresholded protocol of the OrthoAD paper's code (its PRO .942 / ROC .982
  figures), for comparison only.
A metric that is undefined for the data (a single class) returns None, never NaN.

Pixels whose score is NaN were not scored (outside a centre crop, mapped back to the original
image): the pixel metrics leave them out, and a defect region counts only its scored pixels (a
region with none drops out).
"""
import numpy as np
from scipy import ndimage
from sklearn.metrics import roc_auc_score

_EIGHT_CONNECTED = np.ones((3, 3), dtype=int)


def image_auroc(labels, scores):
    """ROC AUC of image scores; None if only one class is present."""
    labels = np.asarray(labels).astype(bool)
    if labels.all() or not labels.any():
        return None
    return float(roc_auc_score(labels, np.asarray(scores, dtype=np.float64)))


class PixelSet:
    """Scores of the pixels of many maps, with the defect pixels' regions, for exact pixel
    metrics from one sort.

    Args:
        capacity: expected number of pixels (the buffer grows if more are added).
    """

    def __init__(self, capacity=0):
        self._scores = np.empty(max(int(capacity), 1), dtype=np.float32)
        self.n = 0
        self._d_scores, self._d_comps = [], []
        self._n_labels = 0
        self._sorted = False

    @classmethod
    def from_maps(cls, masks, maps):
        size = sum(np.asarray(m).size for m in maps)
        out = cls(size)
        for mask, amap in zip(masks, maps):
            out.add(amap, mask)
        return out

    def _append(self, kept):
        if self._sorted:
            raise ValueError("PixelSet is closed: add every map before computing a metric")
        if self.n + kept.size > len(self._scores):
            grown = np.empty(max(2 * len(self._scores), self.n + kept.size), dtype=np.float32)
            grown[:self.n] = self._scores[:self.n]
            self._scores = grown
        self._scores[self.n:self.n + kept.size] = kept
        self.n += kept.size

    def add(self, amap, mask):
        """Add one map [H, W] and its bool mask [H, W] (NaN scores: unscored, left out)."""
        s = np.asarray(amap, dtype=np.float32).ravel()
        m = np.asarray(mask, dtype=bool)
        scored = np.isfinite(s)
        self._append(s if scored.all() else s[scored])
        if m.any():
            lab, k = ndimage.label(m, structure=_EIGHT_CONNECTED)
            lab = lab.ravel()
            defect = (lab > 0) & scored
            self._d_scores.append(s[defect])
            self._d_comps.append((lab[defect] + self._n_labels).astype(np.int32))
            self._n_labels += k

    def _close(self):
        """Sort the scores in place (once) and gather the defect pixels."""
        if not self._sorted:
            self._scores = self._scores[:self.n]
            self._scores.sort()
            self.d_scores = np.concatenate(self._d_scores) if self._d_scores else \
                np.zeros(0, np.float32)
            self.d_comps = np.concatenate(self._d_comps) if self._d_comps else \
                np.zeros(0, np.int32)
            self._d_scores = self._d_comps = None
            self.sizes = np.bincount(self.d_comps, minlength=self._n_labels + 1)
            self.n_regions = int(np.count_nonzero(self.sizes[1:]))
            self.n_defect = int(self.d_scores.size)
            self.n_ok = self.n - self.n_defect
            self._sorted = True
        return self._scores

    @property
    def defined(self):
        """True if there are both defect and normal pixels."""
        self._close()
        return self.n_defect > 0 and self.n_ok > 0

    # ----------------------------------------------------------------- ROC

    def _counts_at_or_above(self, values):
        """(#pixels >= v, #defect pixels >= v) for each v of ``values``."""
        asc = self._close()
        d_asc = np.sort(self.d_scores)
        return (self.n - np.searchsorted(asc, values, side="left"),
                self.n_defect - np.searchsorted(d_asc, values, side="left"))

    def auroc(self, chunk=1 << 20):
        """Pixel ROC AUC; None without defect or normal pixels."""
        if not self.defined:
            return None
        asc, d_asc = self._scores, np.sort(self.d_scores)
        u = 0.0
        for lo in range(0, self.n_defect, chunk):
            s = d_asc[lo:lo + chunk]
            less = np.searchsorted(asc, s, side="left") - np.searchsorted(d_asc, s, side="left")
            equal = (np.searchsorted(asc, s, side="right") - np.searchsorted(asc, s, side="left")
                     - np.searchsorted(d_asc, s, side="right")
                     + np.searchsorted(d_asc, s, side="left"))
            u += float(less.sum(dtype=np.float64)) + 0.5 * float(equal.sum(dtype=np.float64))
        return u / (float(self.n_defect) * float(self.n_ok))

    def roc_curve(self, points=512):
        """(fpr, tpr) at ``points`` quantile thresholds, for plots."""
        if not self.defined:
            return None
        asc = self._close()
        idx = np.unique(np.linspace(0, self.n - 1, points).astype(np.int64))
        at_or_above, d_at_or_above = self._counts_at_or_above(asc[idx][::-1])
        fpr = (at_or_above - d_at_or_above) / self.n_ok
        tpr = d_at_or_above / self.n_defect
        return np.concatenate([[0.0], fpr, [1.0]]), np.concatenate([[0.0], tpr, [1.0]])

    # ----------------------------------------------------------------- PRO

    def au_pro(self, limit=0.3, curve_points=0, chunk=1 << 20):
        """Normalised area under the PRO curve up to FPR ``limit`` (official definition).

        The curve has a point at the end of every run of equal scores (descending), FPR in
        float32 as the official code; it is streamed in chunks and stops at the first point past
        ``limit`` (float32 rounding included), so memory stays O(chunk).

        Returns:
            float in [0, 1], or None without defect regions or normal pixels; with
            ``curve_points`` > 0, (value, (fpr, pro)) with about that many curve points.
        """
        if not self.defined or self.n_regions == 0:
            return None if not curve_points else (None, None)
        asc = self._scores
        n, n_ok = self.n, self.n_ok
        # defect pixels by descending score: index (in descending order of all pixels) of the
        # end of their score's run, and the cumulative PRO weight up to it
        order = np.argsort(self.d_scores, kind="stable")[::-1]
        run_end = n - 1 - np.searchsorted(asc, self.d_scores[order], side="left")
        weight = np.cumsum(1.0 / self.sizes[self.d_comps[order]]) / self.n_regions
        del order
        # the smallest FP count whose float32 FPR exceeds the limit, and the position that surely
        # reaches it (every defect pixel before it)
        need = min(int(limit * n_ok) + 1, n_ok)
        while need < n_ok and np.float32(need) / np.float32(n_ok) <= limit:
            need += 1
        stop = min(n, need + self.n_defect + 1)
        if stop < n:                                     # extended to the end of its score's run
            stop = n - int(np.searchsorted(asc, asc[n - stop], side="left"))
        n_ok32 = np.float32(n_ok)
        x0, y0, area, done = 0.0, 0.0, 0.0, False
        keep_every = max(1, stop // max(curve_points, 1)) if curve_points else 0
        curve = [(0.0, 0.0)]
        for lo in range(0, stop, chunk):
            hi = min(stop, lo + chunk)
            desc = asc[n - 1 - lo:n - 1 - hi:-1] if n - 1 - hi >= 0 else asc[n - 1 - lo::-1]
            nxt = asc[n - 1 - hi] if hi < n else None
            ends = np.flatnonzero(np.append(desc[1:] != desc[:-1],
                                             True if nxt is None else desc[-1] != nxt)) + lo
            k = np.searchsorted(run_end, ends, side="right")
            fpr = np.minimum((ends + 1 - k).astype(np.float32) / n_ok32, np.float32(1.0))
            pro = np.minimum(np.where(k > 0, weight[np.maximum(k - 1, 0)], 0.0), 1.0)
            x = np.concatenate([[x0], fpr.astype(np.float64)])
            y = np.concatenate([[y0], pro])
            past = np.flatnonzero(x > limit)
            if len(past):
                i = past[0]
                area += float(np.sum(0.5 * (y[1:i] + y[:i - 1]) * np.diff(x[:i])))
                y_at = y[i - 1] + (y[i] - y[i - 1]) * (limit - x[i - 1]) / (x[i] - x[i - 1])
                area += 0.5 * (y_at + y[i - 1]) * (limit - x[i - 1])
                if curve_points:
                    curve += list(zip(x[1:i + 1:keep_every], y[1:i + 1:keep_every]))
                    curve.append((limit, y_at))
                done = True
                break
            area += float(np.sum(0.5 * (y[1:] + y[:-1]) * np.diff(x)))
            if curve_points:
                curve += list(zip(x[1::keep_every], y[1::keep_every]))
            x0, y0 = x[-1], y[-1]
        if not done:                       # the curve ended at or before the limit: (1, 1)
            x = np.array([x0, 1.0])
            y = np.array([y0, 1.0])
            if limit >= 1.0:
                area += 0.5 * (y0 + 1.0) * (1.0 - x0)
            else:
                y_at = y0 + (1.0 - y0) * (limit - x0) / (1.0 - x0)
                area += 0.5 * (y_at + y0) * (limit - x0)
            curve.append((min(limit, 1.0), 1.0 if limit >= 1.0 else y_at))
        value = area / limit
        if not curve_points:
            return value
        fx, fy = np.array(curve).T
        return value, (fx, fy)

    # ----------------------------------------------------------------- thresholds

    def f1_at(self, threshold):
        """Pixel F1 of ``score > threshold`` against the masks, TP / FP / FN counted over all
        pixels together (MVTec AD 2's SegF1); None without defect pixels."""
        asc = self._close()
        if self.n_defect == 0 or threshold is None:
            return None
        threshold = np.float32(threshold)      # compared as the masks compare the float32 maps
        above = self.n - int(np.searchsorted(asc, threshold, side="right"))
        tp = self.n_defect - int(np.searchsorted(np.sort(self.d_scores), threshold,
                                                 side="right"))
        fp, fn = above - tp, self.n_defect - tp
        return 2.0 * tp / (2.0 * tp + fp + fn)

    def f1_threshold(self):
        """(threshold, f1): the pixel threshold (score > threshold = defect) of best F1."""
        asc = self._close()
        if self.n_defect == 0:
            return None, None
        cand = np.unique(self.d_scores)                   # include everything >= candidate
        at_or_above, tp = self._counts_at_or_above(cand)
        fp = at_or_above - tp
        f1 = 2.0 * tp / (2.0 * tp + fp + (self.n_defect - tp))
        best = int(np.argmax(f1[::-1]))                  # ties: the highest threshold
        best = len(cand) - 1 - best
        below = np.searchsorted(asc, cand[best], side="left")
        low = asc[below - 1] if below > 0 else cand[best] - 1.0
        return float((low + cand[best]) / 2.0), float(f1[best])

    def fpr_threshold(self, fpr):
        """The lowest pixel threshold (a pixel score) at which at most ``fpr`` of the normal
        pixels score above it."""
        asc = self._close()
        d_asc = np.sort(self.d_scores)
        allowed = int(np.floor(fpr * self.n_ok))
        lo, hi = 0, self.n - 1
        while lo < hi:                                   # smallest index with few enough FPs
            mid = (lo + hi) // 2
            t = asc[mid]
            above = (self.n - np.searchsorted(asc, t, "right")) - \
                (self.n_defect - np.searchsorted(d_asc, t, "right"))
            if above <= allowed:
                hi = mid
            else:
                lo = mid + 1
        return float(asc[lo])


SPRO_LIMITS = (0.01, 0.05, 0.1, 0.3, 1.0)   # MVTec LOCO's integration limits (0.05: headline)


def saturation_pixels(value, relative, area):
    """A defect's saturation in pixels as MVTec LOCO's evaluation computes it from its
    ``defects_config.json`` entry: ``int(value * area)`` (truncated) if relative, else
    ``min(value, area)``; at least 1 (the official code divides by zero below that)."""
    sat = int(value * area) if relative else min(value, area)
    return max(sat, 1)


class SaturatedPRO:
    """MVTec LOCO's AU-sPRO (Bergmann et al., IJCV 2022), exactly as MVTec's evaluation code
    (``evaluate_experiment.py``, version 2.0) defines it, for subsets of the test images.

    Per threshold t (a pixel is positive when its score > t):

    * FPR = the positive defect-free pixels over all defect-free pixels of ALL images of the
      subset: the good images and the anomalous images outside every one of their defects;
    * sPRO = the mean over the subset's defects (one per ground-truth file, whatever its
      connected components) of min(positive pixels of the defect / its saturation, 1).

    The area under (FPR, sPRO) up to a limit, divided by the limit, with every distinct score a
    threshold (the official code samples thresholds until adjacent curve points are within
    ``--curve_max_distance`` 0.001; it agrees with this exact curve to that resolution) and the
    value at the limit interpolated linearly between its neighbours, as the official ``trapz``.
    Images are added to named groups ('good', 'logical_anomalies', ...); ``area(groups)`` takes
    the union of the groups, as the official code adds the good images to each anomaly subset.

    Unscored (NaN) pixels are left out, as by ``PixelSet``: a defect counts its scored pixels
    (its saturation is computed from them), one without any drops out.
    Memory: 4 bytes per defect-free pixel, 12 per defect pixel.
    """

    def __init__(self):
        self._ok = {}            # group -> [float32 scores of defect-free pixels]
        self._regions = {}       # group -> [(float32 scores of the defect's pixels, saturation)]

    def add(self, amap, group, defects=()):
        """Add one map [H, W] to ``group``; ``defects``: [(bool [H, W], saturation_threshold,
        relative)], one per ground-truth file (they may overlap or be disconnected)."""
        s = np.asarray(amap, dtype=np.float32)
        scored = np.isfinite(s)
        inside_any = np.zeros(s.shape, dtype=bool)
        for mask, value, relative in defects:
            m = np.asarray(mask, dtype=bool)
            inside_any |= m
            scores = s[m & scored]
            if scores.size:
                self._regions.setdefault(group, []).append(
                    (scores, saturation_pixels(value, relative, scores.size)))
        self._ok.setdefault(group, []).append(s[~inside_any & scored])

    def n_defects(self, groups):
        return sum(len(self._regions.get(g, [])) for g in groups)

    def area(self, groups, limits=SPRO_LIMITS, chunk=1 << 20):
        """{limit: normalised area under the sPRO curve up to that FPR} over the images of
        ``groups``; None for every limit without defects or without defect-free pixels."""
        regions = [r for g in groups for r in self._regions.get(g, [])]
        ok = [a for g in groups for a in self._ok.get(g, [])]
        asc = np.concatenate(ok) if ok else np.zeros(0, np.float32)
        n = asc.size
        if not regions or n == 0:
            return {limit: None for limit in limits}
        asc.sort()
        scores = np.concatenate([s for s, _ in regions])
        region = np.repeat(np.arange(len(regions)), [s.size for s, _ in regions])
        sat = np.array([t for _, t in regions], dtype=np.float64)
        order = np.argsort(scores, kind="stable")[::-1]            # defect pixels, descending
        by_region = region[order]
        grouped = np.argsort(by_region, kind="stable")
        starts = np.flatnonzero(np.r_[True, np.diff(by_region[grouped]) != 0])
        rank = np.empty(order.size, dtype=np.float64)             # 1-based, within the defect
        rank[grouped] = np.arange(order.size) - np.repeat(starts, np.diff(
            np.r_[starts, order.size])) + 1.0
        s_r = sat[by_region]
        gain = (np.minimum(rank, s_r) - np.minimum(rank - 1.0, s_r)) / s_r / len(regions)
        found = np.concatenate([[0.0], np.cumsum(gain)])           # sPRO of the top-k pixels
        d_asc = scores[order][::-1]
        m = d_asc.size
        del order, by_region, grouped, rank, s_r, gain

        def spro(values, side):                                    # sPRO at score > / >= v
            return found[m - np.searchsorted(d_asc, values, side=side)]

        out, total = {}, 0.0
        pending = sorted(limits)
        desc = asc[::-1]
        for lo in range(0, n, chunk):
            block = desc[lo:lo + chunk]
            first = np.r_[lo == 0 or block[0] != desc[lo - 1], block[1:] != block[:-1]]
            v = block[first]                                       # distinct values, descending
            x0 = (n - np.searchsorted(asc, v, side="right")) / n   # FPR at score > v
            x1 = (n - np.searchsorted(asc, v, side="left")) / n    # FPR at score >= v
            y0, y1 = spro(v, "right"), spro(v, "left")
            seg = 0.5 * (x1 - x0) * (y1 + y0)
            cum = total + np.cumsum(seg)
            while pending:
                limit = pending[0]
                past = np.flatnonzero(x1 > limit)
                if not len(past):
                    break
                i = past[0]
                y_at = y0[i] + (y1[i] - y0[i]) * (limit - x0[i]) / (x1[i] - x0[i])
                out[limit] = float((cum[i] - seg[i] + 0.5 * (limit - x0[i]) * (y_at + y0[i]))
                                   / limit)
                pending.pop(0)
            total = float(cum[-1])
            if not pending:
                break
        for limit in pending:                                      # limit 1: the whole curve
            out[limit] = total / limit
        return {limit: out[limit] for limit in limits}


def loco_image_auroc(normal_scores, anomalous_scores):
    """Image ROC AUC as MVTec LOCO's evaluation computes it (``compute_classification_auc_roc``):
    without ties between scores it equals ``image_auroc``; with ties it differs, because the
    official curve takes its point after the FIRST image of each run of equal scores (normal
    images sorted before anomalous ones) instead of after the whole run. None if either list is
    empty."""
    ok = np.asarray(normal_scores, dtype=np.float64)
    nok = np.asarray(anomalous_scores, dtype=np.float64)
    if ok.size == 0 or nok.size == 0:
        return None
    scores = np.concatenate([ok, nok])
    labels = np.r_[np.zeros(ok.size, bool), np.ones(nok.size, bool)]
    order = np.argsort(scores, kind="stable")                     # ascending, normal first
    s, y = scores[order], labels[order]
    fp = ok.size - np.cumsum(~y)                                  # after removing 0..i
    tp = nok.size - np.cumsum(y)
    point = np.r_[True, s[1:] != s[:-1]]                          # first of each run ...
    point[-1] = True                                              # ... and the last image
    fpr = np.r_[1.0, fp[point] / ok.size][::-1]
    tpr = np.r_[1.0, tp[point] / nok.size][::-1]
    return float(np.sum(0.5 * (tpr[1:] + tpr[:-1]) * np.diff(fpr)))


def pixel_auroc(masks, maps):
    """ROC AUC over all scored pixels of all images; None without defect (or normal) pixels."""
    return PixelSet.from_maps(masks, maps).auroc()


def au_pro(masks, maps, limit=0.3):
    """Normalised area under the PRO curve up to FPR ``limit`` (official MVTec AD definition).

    Args:
        masks: bool [N, H, W] ground truth.
        maps: float [N, H, W] anomaly maps.
        limit: integration limit of the false positive rate, in (0, 1].

    Returns:
        float in [0, 1], or None if the set has no defect region or no normal pixel.
    """
    return PixelSet.from_maps(masks, maps).au_pro(limit)


# --------------------------------------------------------------------------- image verdicts

def confusion(labels, scores, threshold):
    """Verdicts ``score > threshold`` against the labels: tp, fp, tn, fn, precision, recall,
    f1, fpr (a ratio with an empty denominator is None)."""
    labels = np.asarray(labels).astype(bool)
    flagged = np.asarray(scores, dtype=np.float64) > threshold
    tp, fp = int((flagged & labels).sum()), int((flagged & ~labels).sum())
    fn, tn = int((~flagged & labels).sum()), int((~flagged & ~labels).sum())

    def ratio(a, b):
        return a / b if b else None
    precision, recall = ratio(tp, tp + fp), ratio(tp, tp + fn)
    return {"tp": tp, "fp": fp, "tn": tn, "fn": fn, "precision": precision, "recall": recall,
            "f1": ratio(2 * tp, 2 * tp + fp + fn) if labels.any() else None,
            "fpr": ratio(fp, fp + tn)}


def best_f1_threshold(labels, scores):
    """(threshold, f1) of the best F1 of ``score > threshold`` (the threshold halfway between
    the chosen cut's neighbours; ties: the highest); (None, None) without defect images."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    if not labels.any():
        return None, None
    cand = np.unique(scores[labels])
    best_f1, best_t = -1.0, None
    for s in cand[::-1]:
        below = scores[scores < s]
        t = (below.max() + s) / 2.0 if below.size else s - max(1e-6, abs(s) * 1e-6)
        f1 = confusion(labels, scores, t)["f1"]
        if f1 > best_f1:
            best_f1, best_t = f1, float(t)
    return best_t, best_f1


def fpr_threshold(normal_scores, fpr):
    """The lowest threshold (a normal image's score) with at most ``fpr`` of the normal images
    scoring above it."""
    s = np.sort(np.asarray(normal_scores, dtype=np.float64))[::-1]
    allowed = int(np.floor(fpr * len(s)))
    return float(s[min(allowed, len(s) - 1)])


def paper_pro_roc(masks, maps, n_thresholds=1000, pro_limit=0.3):
    """PRO (up to FPR ``pro_limit``) and ROC as the OrthoAD paper's evaluation code defines them.

    Thresholds are the 1000 descending quantiles of the one map holding the global maximum;
    FPR is the mean over images of per-image false positive rates; PRO the mean over defective
    images of their mean region overlap; ROC uses the mean per-image true positive rate.
    Unscored (NaN) pixels are left out everywhere, as by the other pixel metrics.

    Returns:
        (pro, roc) floats, or (None, None) without defective or normal pixels.
    """
    masks = np.asarray(masks).astype(bool)
    maps = np.asarray(maps, dtype=np.float64)
    scored = np.isfinite(maps)
    n = maps.shape[0]
    if not (masks & scored).any() or not (~masks & scored).any():
        return None, None
    peaks = np.where(scored, maps, -np.inf).reshape(n, -1).max(axis=1)
    top = int(np.argmax(peaks))
    values = np.sort(maps[top][scored[top]])
    p = values.size
    idx = [max(1, (p * i) // n_thresholds) - 1 for i in range(n_thresholds, 0, -1)]
    thr = values[idx]                                    # descending thresholds

    def above(sorted_scores):                            # count of scores > each threshold
        return len(sorted_scores) - np.searchsorted(sorted_scores, thr, side="right")

    fprs, tprs, pros = [], [], []
    for m, s, f in zip(masks, maps, scored):
        ok, bad = ~m & f, m & f
        if ok.any():
            fprs.append(above(np.sort(s[ok])) / ok.sum())
        if bad.any():
            tprs.append(above(np.sort(s[bad])) / bad.sum())
            lab, k = ndimage.label(m, structure=_EIGHT_CONNECTED)
            regions = [(lab == c) & f for c in range(1, k + 1)]
            pros.append(np.mean([above(np.sort(s[r])) / r.sum() for r in regions if r.any()],
                                axis=0))
    fpr, tpr, pro = np.mean(fprs, axis=0), np.mean(tprs, axis=0), np.mean(pros, axis=0)
    return _slope_area(fpr, pro, pro_limit), _slope_area(fpr, tpr, 1.0)


def _slope_area(fpr, y, limit):
    """The paper code's area: stop after the first FPR above ``limit``, the later point wins
    for equal FPRs, and the last segment uses the mean of the last two values."""
    points = {}
    for f, v in zip(fpr, y):
        points[float(f)] = float(v)
        if f > limit:
            break
    f = np.array(sorted(points))
    v = np.array([points[x] for x in f])
    m = len(f)
    if m < 2:
        return float(np.clip(v[0], 0.0, 1.0))
    area = f[0] * v[0] / 2 + np.sum((f[1:m - 1] - f[:m - 2]) * (v[1:m - 1] + v[:m - 2]) / 2)
    pbar = (v[m - 1] + v[m - 2]) / 2
    area += (limit - f[m - 2]) * (pbar + v[m - 2]) / 2
    return float(area / limit)
