import numpy as np
import pytest
from scipy import ndimage
from scipy.stats import mannwhitneyu

import metrics
from conftest import official_au_pro, official_case

OFFICIAL = {  # ALGORITHM.md section 6: values of the official MVTec AD evaluation code
    "A": ((0, 0.0, None), (0.135976183867, 0.056915982517, 0.028583465608, 0.464259984260), 0.875),
    "B": ((0, 0.0, 1), (0.134639274903, 0.050864273431, 0.027313348915, 0.469038711682), 0.5),
    "C": ((1, 0.5, None), (0.654686197004, 0.565374659154, 0.547070790138, 0.875627632323), 1.0),
    "D": ((1, 0.5, 2), (0.654329138698, 0.565632681149, 0.547243607733, 0.875413903980), 1.0),
}


@pytest.mark.parametrize("case", sorted(OFFICIAL))
def test_au_pro_matches_official_values(case):
    (seed, signal, dec), expected, img_auc = OFFICIAL[case]
    gts, maps = official_case(seed, signal, dec)
    for limit, value in zip((0.3, 0.1, 0.05, 1.0), expected):
        assert metrics.au_pro(gts, maps, limit) == pytest.approx(value, abs=1e-6)
    labels = gts.reshape(8, -1).any(axis=1)
    assert metrics.image_auroc(labels, maps.reshape(8, -1).max(axis=1)) == pytest.approx(img_auc)


def test_list_of_maps_gives_the_same_values_as_a_stacked_array():
    gts, maps = official_case(1, 0.5, None)
    assert metrics.au_pro(list(gts), list(maps)) == metrics.au_pro(gts, maps)
    assert metrics.pixel_auroc(list(gts), list(maps)) == metrics.pixel_auroc(gts, maps)
    ragged_g = [g[: 32 - i, : 48 - 2 * i] for i, g in enumerate(gts)]
    ragged_m = [m[: 32 - i, : 48 - 2 * i] for i, m in enumerate(maps)]
    assert metrics.au_pro(ragged_g, ragged_m) == pytest.approx(
        official_au_pro(ragged_g, ragged_m), abs=1e-9)


def test_pixel_auroc_equals_mann_whitney():
    gts, maps = official_case(1, 0.5, None)
    pos, neg = maps[gts], maps[~gts]
    u = mannwhitneyu(pos, neg).statistic
    assert metrics.pixel_auroc(gts, maps) == pytest.approx(u / (len(pos) * len(neg)), abs=1e-12)


def test_undefined_metrics_are_none_not_nan():
    maps = np.random.default_rng(0).random((3, 8, 8))
    empty = np.zeros((3, 8, 8), dtype=bool)
    assert metrics.pixel_auroc(empty, maps) is None
    assert metrics.au_pro(empty, maps) is None
    assert metrics.image_auroc([0, 0, 0], [1, 2, 3]) is None
    assert metrics.paper_pro_roc(empty, maps) == (None, None)


@pytest.mark.parametrize("maps", [np.zeros((4, 16, 16)), np.round(
    np.random.default_rng(1).random((4, 16, 16)), 0)])
def test_au_pro_of_degenerate_maps_equals_the_definition(maps):
    """Constant maps and maps of two values (runs of ties over whole images)."""
    gts = np.zeros((4, 16, 16), dtype=bool)
    gts[1, 3, 3] = True                       # a single-pixel region
    gts[2, 5:9, 5:9] = True
    assert metrics.au_pro(gts, maps) == pytest.approx(official_au_pro(gts, maps), abs=1e-9)


def _paper_oracle(masks, maps, n_thr=1000, limit=0.3):
    """Straightforward loops over thresholds and images (ALGORITHM.md section 6, paper code)."""
    n, h, w = maps.shape
    ref = np.sort(maps[np.argmax(maps.reshape(n, -1).max(1))].ravel())
    curve_pro, curve_roc = [], []
    for i in range(n_thr, 0, -1):
        t = ref[max(1, (h * w * i) // n_thr) - 1]
        fprs, tprs, pros = [], [], []
        for m, s in zip(masks, maps):
            b = s > t
            fprs.append((b & ~m).sum() / (~m).sum())
            if m.any():
                tprs.append((b & m).sum() / m.sum())
                lab, k = ndimage.label(m, structure=np.ones((3, 3)))
                pros.append(np.mean([(b & (lab == c)).sum() / (lab == c).sum()
                                     for c in range(1, k + 1)]))
        curve_pro.append((np.mean(fprs), np.mean(pros)))
        curve_roc.append((np.mean(fprs), np.mean(tprs)))

    def area(curve, a):
        pts = {}
        for f, p in curve:
            pts[f] = p
            if f > a:
                break
        f = sorted(pts)
        p = [pts[x] for x in f]
        m = len(f)
        s = f[0] * p[0] / 2
        for j in range(1, m - 1):
            s += (f[j] - f[j - 1]) * (p[j] + p[j - 1]) / 2
        s += (a - f[m - 2]) * ((p[m - 1] + p[m - 2]) / 2 + p[m - 2]) / 2
        return s / a

    return area(curve_pro, limit), area(curve_roc, 1.0)


@pytest.mark.parametrize("seed,signal", [(0, 0.0), (1, 0.5)])
def test_paper_protocol_matches_loop_oracle(seed, signal):
    gts, maps = official_case(seed, signal, None)
    pro, roc = metrics.paper_pro_roc(gts, maps, n_thresholds=200)
    ref_pro, ref_roc = _paper_oracle(gts, maps, n_thr=200)
    assert pro == pytest.approx(ref_pro, abs=1e-12)
    assert roc == pytest.approx(ref_roc, abs=1e-12)


@pytest.mark.parametrize("decimals", [0, 1, 2, None])
@pytest.mark.parametrize("seed", [0, 1])
def test_au_pro_equals_direct_argsort_definition(decimals, seed):
    rng = np.random.default_rng(seed)
    maps = rng.random((12, 30, 30))
    gts = np.zeros(maps.shape, dtype=bool)
    gts[::2, 5:15, 5:15] = True
    gts[1::4, 20:22, 2:29] = True
    gts[3, 0, 0] = True
    maps = maps + 0.3 * seed * gts
    if decimals is not None:
        maps = np.round(maps, decimals)
    for limit in (0.01, 0.05, 0.3, 0.7, 1.0):
        assert metrics.au_pro(gts, maps, limit) == pytest.approx(
            official_au_pro(gts, maps, limit), abs=1e-12)


def test_pixel_auroc_equals_scikit_learn_with_ties_and_unscored_pixels():
    from sklearn.metrics import roc_auc_score
    rng = np.random.default_rng(3)
    maps = np.round(rng.random((9, 40, 30)), 2).astype(np.float32)
    masks = np.zeros(maps.shape, bool)
    masks[1::2, 10:20, 5:25] = True
    maps[masks] += 0.1
    maps[0, :5] = np.nan                                   # unscored pixels are left out
    maps[1, 10:12, 5:25] = np.nan
    scored = np.isfinite(maps)
    ref = roc_auc_score(masks[scored], maps[scored])
    assert metrics.pixel_auroc(masks, maps) == pytest.approx(ref, abs=1e-9)
    assert metrics.pixel_auroc(list(masks), list(maps)) == pytest.approx(ref, abs=1e-9)


@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_streamed_au_pro_does_not_depend_on_the_chunk_size(chunk):
    gts, maps = official_case(0, 0.0, 1)                   # case B: many ties across chunks
    for limit, value in ((0.3, 0.134639274903), (1.0, 0.469038711682)):
        got = metrics.PixelSet.from_maps(gts, maps).au_pro(limit, chunk=chunk)
        assert got == pytest.approx(value, abs=1e-6)


def _official_from_counts(runs, n_regions, n_ok, limit):
    """The official curve written over runs of equal scores (descending): each run is
    (normal pixels, PRO weight of its defect pixels); FPR in float32 as the official code."""
    fp, pro, xs, ys = 0, 0.0, [0.0], [0.0]
    for normal, weight in runs:
        fp += normal
        pro += weight
        xs.append(min(float(np.float32(fp) / np.float32(n_ok)), 1.0))
        ys.append(min(pro / n_regions, 1.0))
    xs, ys = np.array(xs + [1.0]), np.array(ys + [1.0])
    i = int(np.searchsorted(xs, limit, side="right"))
    area = np.sum(0.5 * (ys[1:i] + ys[:i - 1]) * np.diff(xs[:i]))
    if xs[i - 1] != limit:
        y_at = ys[i - 1] + (ys[i] - ys[i - 1]) * (limit - xs[i - 1]) / (xs[i] - xs[i - 1])
        area += 0.5 * (y_at + ys[i - 1]) * (limit - xs[i - 1])
    return area / limit


def test_au_pro_at_1e8_pixels_reaches_the_limit_in_float32():
    """10^8 normal pixels: FPR is float32 (as in the official code), so FP = int(0.3 n) + 2 still
    rounds to FPR <= 0.3 and a curve cut there would end before the limit (the old code's cut;
    it raised IndexError). Distinct scores straddle the crossing; the oracle is the official
    curve over the runs of equal scores."""
    n_ok = 100_000_000
    need = int(0.3 * n_ok) + 1
    assert np.float32(need + 1) / np.float32(n_ok) <= 0.3           # the case is a hard one
    steps = (np.float32(9.0) - np.float32(0.01) * np.arange(60, dtype=np.float32))
    defect_steps = steps - np.float32(0.005)
    head, tail = need - 20, n_ok - (need - 20) - 60
    flat = np.empty(n_ok, dtype=np.float32)
    flat[:head] = 10.0
    flat[head:head + 60] = steps
    flat[head + 60:] = 0.0
    pixels = metrics.PixelSet(n_ok + 460)
    for lo in range(0, n_ok, 10_000_000):
        pixels.add(flat[lo:lo + 10_000_000].reshape(1000, -1), np.zeros((1000, 10_000), bool))
    del flat
    pixels.add(np.full((20, 20), 50.0, np.float32), np.ones((20, 20), bool))   # region A
    pixels.add(defect_steps.reshape(6, 10), np.ones((6, 10), bool))            # region B
    value, (fx, fy) = pixels.au_pro(0.3, curve_points=100)
    runs = [(0, 400 / 400), (head, 0.0)]
    for _ in range(60):
        runs += [(1, 0.0), (0, 1 / 60)]
    runs.append((tail, 0.0))
    assert value == pytest.approx(_official_from_counts(runs, 2, n_ok, 0.3), abs=1e-9)
    assert fx[-1] == 0.3 and fx[-2] <= 0.3                            # ends at the limit
    assert metrics.PixelSet.from_maps([np.ones((2, 2), bool)], [np.ones((2, 2))]).au_pro() is None


def test_pixel_thresholds_match_brute_force():
    rng = np.random.default_rng(4)
    maps = np.round(rng.random((6, 20, 20)), 3)
    masks = np.zeros(maps.shape, bool)
    masks[::2, 5:10, 5:12] = True
    maps[masks] += 0.3
    pixels = metrics.PixelSet.from_maps(masks, maps)
    t, f1 = pixels.f1_threshold()
    s, y = maps.ravel().astype(np.float32), masks.ravel()
    brute = max(metrics.confusion(y, s, float(v) - 1e-9)["f1"] for v in np.unique(s[y]))
    assert f1 == pytest.approx(brute, abs=1e-12)
    assert metrics.confusion(y, s, t)["f1"] == pytest.approx(f1, abs=1e-12)
    t = pixels.fpr_threshold(0.01)
    normal = s[~y]
    brute = min(v for v in np.unique(s) if (normal > v).mean() <= 0.01)   # lowest allowed
    assert t == brute


def test_image_verdicts_equal_scikit_learn_and_brute_force():
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support
    rng = np.random.default_rng(5)
    labels = rng.random(40) < 0.4
    scores = rng.random(40) + 0.5 * labels
    c = metrics.confusion(labels, scores, 0.8)
    tn, fp, fn, tp = confusion_matrix(labels, scores > 0.8).ravel()
    p, r, f, _ = precision_recall_fscore_support(labels, scores > 0.8, average="binary")
    assert (c["tp"], c["fp"], c["tn"], c["fn"]) == (tp, fp, tn, fn)
    assert (c["precision"], c["recall"], c["f1"]) == pytest.approx((p, r, f))
    assert c["fpr"] == pytest.approx(fp / (fp + tn))
    t, f1 = metrics.best_f1_threshold(labels, scores)
    grid = np.sort(np.concatenate([scores, scores - 1e-9]))
    assert f1 == pytest.approx(max(metrics.confusion(labels, scores, g)["f1"] for g in grid))
    assert metrics.confusion(labels, scores, t)["f1"] == pytest.approx(f1)
    t = metrics.fpr_threshold(scores[~labels], 0.1)
    assert (scores[~labels] > t).mean() <= 0.1
    assert metrics.best_f1_threshold(np.zeros(5, bool), scores[:5]) == (None, None)


def test_seg_f1_equals_scikit_learn_on_the_binarised_pixels():
    """SegF1 (MVTec AD 2): F1 of map > threshold over all pixels pooled, unscored ones left
    out; oracle: sklearn's f1_score on the flattened binarised maps."""
    from sklearn.metrics import f1_score
    gts, maps = official_case(1, 0.5, 2)
    maps = maps.astype(np.float32)
    maps[2, :3, :5] = np.nan                         # unscored pixels leave both counts
    ps = metrics.PixelSet.from_maps(gts, maps)
    keep = np.isfinite(maps)
    for thr in (0.3, 0.75, float(np.nanmedian(maps)), 1.2):
        want = f1_score(gts[keep].ravel(), maps[keep].ravel() > thr)
        assert ps.f1_at(thr) == pytest.approx(want, abs=1e-12)
    assert metrics.PixelSet.from_maps(np.zeros_like(gts), maps).f1_at(0.5) is None
