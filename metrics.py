"""Evaluation metrics as pure functions of NumPy arrays (no model, no Paddle).

Shapes: N test images, maps and masks [N, H, W] (or lists of N arrays [H_i, W_i] when the
images differ in size); labels and image scores [N].

* ``image_auroc`` / ``pixel_auroc``: scikit-learn's ROC AUC.
* ``au_pro``: the per-region overlap curve integrated up to a false positive rate limit, exactly
  as the official MVTec AD evaluation (v1.0) computes it.
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


def _flat(arrays, dtype=None):
    """[N, H, W] array or list of [H_i, W_i] arrays -> one flat array of all pixels."""
    if isinstance(arrays, np.ndarray):
        return arrays.ravel() if dtype is None else arrays.astype(dtype, copy=False).ravel()
    return np.concatenate([np.asarray(a, dtype=dtype).ravel() for a in arrays])


def pixel_auroc(masks, maps):
    """ROC AUC over all scored pixels of all images; None without defect (or normal) pixels."""
    masks, scores = _flat(masks, bool), _flat(maps)
    scored = np.isfinite(scores)
    if not scored.all():
        masks, scores = masks[scored], scores[scored]
    if masks.all() or not masks.any():
        return None
    return float(roc_auc_score(masks, scores))


def _components(masks):
    """8-connected components of each mask: (flat labels, ids unique over the set; count)."""
    parts, total = [], 0
    for m in masks:
        lab, n = ndimage.label(np.asarray(m, dtype=bool), structure=_EIGHT_CONNECTED)
        lab = lab.astype(np.int32).ravel()
        lab[lab > 0] += total
        parts.append(lab)
        total += n
    return np.concatenate(parts), total


def pro_curve(masks, maps, max_fpr=1.0):
    """Official MVTec AD PRO curve over every distinct score.

    Equivalent to sorting all pixels by score (descending) and taking cumulative sums of
    fp = 1 on OK pixels and pro = 1/|C| on the pixels of region C, keeping the last point of every
    run of equal scores. To avoid an argsort of all pixels, only the scores are sorted (fast); the
    defect pixels, usually few, are placed at the end of their score's run by a binary search, so
    the cumulative sums are exact at every run end. With ``max_fpr`` < 1 the curve stops at the
    first point whose FPR exceeds it (all an integral up to ``max_fpr`` needs).

    Returns:
        (fpr, pro): float arrays, FPR ascending, starting at (0, 0) and ending at (1, 1) (or at
        the first point beyond ``max_fpr``); None if there is no defect region or no normal pixel.
    """
    comps, n_regions = _components(masks)
    scores = _flat(maps)
    scored = np.isfinite(scores)
    if not scored.all():
        comps, scores = comps[scored], scores[scored]
        n_regions = int(np.count_nonzero(np.bincount(comps, minlength=n_regions + 1)[1:]))
    n = scores.size
    defect = comps > 0
    n_ok = n - int(defect.sum())
    if n_regions == 0 or n_ok == 0:
        return None
    sizes = np.bincount(comps)
    ascending = np.sort(scores)
    # Prefix of the descending order that surely passes max_fpr, extended to a run end.
    stop = n if max_fpr >= 1.0 else min(n, int(max_fpr * n_ok) + (n - n_ok) + 2)
    if stop < n:
        stop = n - int(np.searchsorted(ascending, ascending[n - stop], side="left"))
    d_scores, d_comps = scores[defect], comps[defect]
    order = np.argsort(d_scores)[::-1]                         # defect pixels, descending score
    # index (in descending order of all pixels) of the end of each defect pixel's score run
    run_end = n - 1 - np.searchsorted(ascending, d_scores[order], side="left")
    inside = run_end < stop
    run_end, order = run_end[inside], order[inside]
    desc = ascending[::-1][:stop]
    keep = np.append(desc[1:] != desc[:-1], True)
    del ascending, desc
    ends, first = np.unique(run_end, return_index=True)
    n_defect = np.cumsum(np.diff(np.append(first, len(run_end))))
    pro_sum = np.cumsum(np.add.reduceat(1.0 / sizes[d_comps[order]], first)) \
        if len(first) else np.zeros(0)
    # step functions over the descending positions, constant between run ends
    lengths = np.diff(np.concatenate([[0], ends, [stop]]))
    positions = np.flatnonzero(keep)
    fp = positions + 1 - np.repeat(np.concatenate([[0], n_defect]), lengths)[positions]
    pro = np.repeat(np.concatenate([[0.0], pro_sum]), lengths)[positions]
    fpr = np.clip(fp.astype(np.float32) / np.float32(n_ok), None, 1.0)
    pro = np.clip(pro / n_regions, None, 1.0)
    tail = [1.0] if stop == n else []
    return np.concatenate([[0.0], fpr, tail]), np.concatenate([[0.0], pro, tail])


def _trapezoid(x, y, x_max):
    """Area under y(x) from x[0] to x_max, interpolating y linearly at x_max (official rule)."""
    correction = 0.0
    if x_max not in x:
        i = int(np.searchsorted(x, x_max))
        y_at = y[i - 1] + (y[i] - y[i - 1]) * (x_max - x[i - 1]) / (x[i] - x[i - 1])
        correction = 0.5 * (y_at + y[i - 1]) * (x_max - x[i - 1])
    keep = x <= x_max
    x, y = x[keep], y[keep]
    return float(np.sum(0.5 * (y[1:] + y[:-1]) * (x[1:] - x[:-1])) + correction)


def au_pro(masks, maps, limit=0.3):
    """Normalised area under the PRO curve up to FPR ``limit`` (official MVTec AD definition).

    Args:
        masks: bool [N, H, W] ground truth.
        maps: float [N, H, W] anomaly maps.
        limit: integration limit of the false positive rate, in (0, 1].

    Returns:
        float in [0, 1], or None if the set has no defect region or no normal pixel.
    """
    curve = pro_curve(masks, maps, max_fpr=limit)
    if curve is None:
        return None
    fpr, pro = curve
    return _trapezoid(fpr.astype(np.float64), pro, limit) / limit


def paper_pro_roc(masks, maps, n_thresholds=1000, pro_limit=0.3):
    """PRO (up to FPR ``pro_limit``) and ROC as the OrthoAD paper's evaluation code defines them.

    Thresholds are the 1000 descending quantiles of the one map holding the global maximum;
    FPR is the mean over images of per-image false positive rates; PRO the mean over defective
    images of their mean region overlap; ROC uses the mean per-image true positive rate.

    Returns:
        (pro, roc) floats, or (None, None) without defective or normal pixels.
    """
    masks = np.asarray(masks).astype(bool)
    maps = np.asarray(maps, dtype=np.float64)
    n, h, w = maps.shape
    if not masks.any() or masks.all():
        return None, None
    values = np.sort(maps[int(np.argmax(maps.reshape(n, -1).max(axis=1)))].ravel())
    p = h * w
    idx = [max(1, (p * i) // n_thresholds) - 1 for i in range(n_thresholds, 0, -1)]
    thr = values[idx]                                    # descending thresholds

    def above(sorted_scores):                            # count of scores > each threshold
        return len(sorted_scores) - np.searchsorted(sorted_scores, thr, side="right")

    fprs, tprs, pros = [], [], []
    for m, s in zip(masks, maps):
        if (~m).any():
            fprs.append(above(np.sort(s[~m])) / (~m).sum())
        if m.any():
            tprs.append(above(np.sort(s[m])) / m.sum())
            lab, k = ndimage.label(m, structure=_EIGHT_CONNECTED)
            pros.append(np.mean([above(np.sort(s[lab == c])) / (lab == c).sum()
                                 for c in range(1, k + 1)], axis=0))
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
