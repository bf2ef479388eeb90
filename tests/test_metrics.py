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
    assert 0.0 <= metrics.au_pro(ragged_g, ragged_m) <= 1.0


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
def test_au_pro_in_unit_interval_for_degenerate_maps(maps):
    gts = np.zeros((4, 16, 16), dtype=bool)
    gts[1, 3, 3] = True                       # a single-pixel region
    gts[2, 5:9, 5:9] = True
    value = metrics.au_pro(gts, maps)
    assert 0.0 <= value <= 1.0


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
