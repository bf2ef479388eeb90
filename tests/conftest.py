import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
warnings.filterwarnings("ignore", message="No ccache found")
# one graph cache for the whole test session (and its scripts), never the user's own
os.environ.setdefault("ORTHOAD_CACHE", os.path.join(
    __import__("tempfile").mkdtemp(prefix="orthoad_test_cache_"), "graphs"))


def run_script(*args, timeout=300, env=None):
    """Run a project script as a user would; return CompletedProcess (text)."""
    env = dict(os.environ, PYTHONWARNINGS="ignore", **(env or {}))
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory):
    """Two small demo categories (brick RGB, gravel grayscale)."""
    from datasets.synthetic import generate
    root = str(tmp_path_factory.mktemp("demo"))
    generate(root, ("brick", "gravel"), n_train=16, n_good=4, n_defect=8, size=128, seed=0)
    return root


@pytest.fixture(scope="session")
def fitted(demo_root, tmp_path_factory):
    """train.main on the demo data (resnet18, random weights, k=20, 128 px) with --eval."""
    import train
    save = str(tmp_path_factory.mktemp("out"))
    args = train.get_args(["--data_path", demo_root, "--category", "all", "--arch", "resnet18",
                           "--k", "20", "--no-pretrained", "--resize", "128", "--crop_size",
                           "128", "--save_path", save, "--eval", "--eval_PRO",
                           "--batch_size", "8"])
    rows = train.main(args)
    with open(os.path.join(save, "ortho_resnet18_k20", "results.csv")) as fh:
        table = fh.read()                 # as train wrote it (later tests evaluate again)
    return {"save": save, "rows": rows, "data": demo_root, "results_csv": table}


def official_case(seed, signal, decimals):
    """The 8 maps of ALGORITHM.md section 6 (32 x 48) and their ground truth."""
    rs = np.random.RandomState(seed)
    maps, gts = [], []
    for i in range(8):
        m = rs.random_sample((32, 48))
        g = np.zeros((32, 48), dtype=bool)
        if i % 2 == 1:
            g[4:12, 4:12] = True
        if i % 4 == 3:
            g[20:22, 30:40] = True
        m = m + signal * g
        if decimals is not None:
            m = np.round(m, decimals)
        maps.append(m)
        gts.append(g)
    return np.array(gts), np.array(maps)


def official_au_pro(masks, maps, limit=0.3):
    """AU-PRO written directly from its definition (ALGORITHM.md section 6): argsort all pixels,
    cumulative sums, last point of each run of equal scores, trapezoid with the PRO value
    interpolated at the limit. Slow and memory-hungry: a test oracle only."""
    from scipy import ndimage
    labels, total = [], 0
    for m in masks:
        lab, k = ndimage.label(m, structure=np.ones((3, 3)))
        lab = lab.ravel()
        lab[lab > 0] += total
        total += k
        labels.append(lab)
    lab = np.concatenate(labels)
    scores = np.concatenate([np.asarray(x).ravel() for x in maps])
    weight = np.where(lab > 0, 1.0 / np.bincount(lab)[lab], 0.0)
    order = np.argsort(scores, kind="stable")[::-1]
    s = scores[order]
    fpr = np.cumsum(lab[order] == 0).astype(np.float32) / np.float32((lab == 0).sum())
    pro = np.cumsum(weight[order]) / total
    keep = np.append(np.diff(s) != 0, True)
    f = np.concatenate([[0], np.clip(fpr[keep], None, 1), [1]]).astype(np.float64)
    p = np.concatenate([[0], np.clip(pro[keep], None, 1), [1]])
    inside = f <= limit
    area = np.sum(0.5 * (p[inside][1:] + p[inside][:-1]) * np.diff(f[inside]))
    if limit not in f:
        i = int(np.searchsorted(f, limit))
        at = p[i - 1] + (p[i] - p[i - 1]) * (limit - f[i - 1]) / (f[i] - f[i - 1])
        area += 0.5 * (at + p[i - 1]) * (limit - f[i - 1])
    return float(area / limit)


# A skip CI hides is a failure: with ORTHOAD_NO_SKIPS=1 (set by .ci/run) a skipped test (the
# browser test without Chromium, the full-disk tests without mount) fails the run, naming why.
_SKIPPED = []


def pytest_runtest_logreport(report):
    if report.skipped:
        _SKIPPED.append((report.nodeid, str(report.longrepr[-1]) if isinstance(
            report.longrepr, tuple) else str(report.longrepr)))


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get("ORTHOAD_NO_SKIPS") == "1" and _SKIPPED:
        lines = "\n".join(f"  {node}: {why}" for node, why in _SKIPPED)
        sys.stderr.write(f"\nORTHOAD_NO_SKIPS=1: {len(_SKIPPED)} test(s) skipped, which this run "
                         f"must not do:\n{lines}\n")
        session.exitstatus = 1
