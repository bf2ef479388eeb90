"""Evaluation on custom data: optional masks, per-image and per-type results, calibrated
thresholds, and the HTML report; scikit-learn is the oracle of every figure it can compute."""
import base64
import csv
import os
import shutil
from html.parser import HTMLParser

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, f1_score, roc_auc_score

import eval as eval_script
import predict
import train
from datasets.synthetic import generate
from modelfile import load_model
from utils import model_path


@pytest.fixture
def fitted(fitted, tmp_path):
    """The session's fitted models, copied: these tests write results beside them."""
    save = tmp_path / "models"
    shutil.copytree(fitted["save"], save)
    return dict(fitted, save=str(save))


def _eval(fitted, data, category, *extra):
    return eval_script.main(eval_script.get_args([
        "--data_path", str(data), "--category", category, "--k", "20", "--save_path",
        fitted["save"], *extra]))


def test_masks_are_optional_and_the_images_behind_each_metric_are_counted(fitted, tmp_path,
                                                                           caplog):
    data = tmp_path / "data"
    shutil.copytree(os.path.join(fitted["data"], "gravel"), data / "gravel")
    gt = data / "gravel" / "ground_truth"
    (gt / "blob" / "000_mask.png").unlink()                 # two defect images lose their mask
    (gt / "scratch" / "001_mask.png").unlink()
    shutil.copy(gt / "patch" / "000_mask.png", gt / "patch" / "777_mask.png")  # mask, no image
    with caplog.at_level("WARNING"):
        rows = _eval(fitted, data, "gravel", "--save_maps", str(tmp_path / "maps"))
    messages = " ".join(r.message for r in caplog.records)
    assert "2 of the 8 defect images" in messages and "have no image" in messages
    row = rows[0]
    assert (row["n_test"], row["n_defect"], row["n_pixel_images"]) == (12, 8, 10)
    import tifffile
    from datasets import mvtec
    from orthoad_runtime.transforms import load_mask
    labels, scores, px_masks, px_maps = [], [], [], []
    for s in mvtec.read(str(data), "gravel").test:
        stem = os.path.splitext(os.path.basename(s.path))[0]
        m = tifffile.imread(tmp_path / "maps" / "gravel" / "test" / s.defect / f"{stem}.tiff")
        labels.append(s.label)
        scores.append(m.max())
        if s.label == 0 or s.has_mask:
            px_maps.append(m.ravel())
            px_masks.append((load_mask(s.masks[0]) > 127).ravel() if s.has_mask else
                            np.zeros(m.size, bool))
    assert row["image_auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-9)
    assert row["pixel_auroc"] == pytest.approx(
        roc_auc_score(np.concatenate(px_masks), np.concatenate(px_maps)), abs=1e-9)
    with open(os.path.join(fitted["save"], "ortho_resnet18_k20", "results.csv")) as fh:
        table = {r["category"]: r for r in csv.DictReader(fh)}
    assert table["gravel"]["n_pixel_images"] == "10" and table["gravel"]["n_test"] == "12"
    assert "brick" in table             # the earlier run's category is kept beside it


def test_a_test_set_without_defects_still_gives_the_verdict_figures(fitted, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(os.path.join(fitted["data"], "brick", "train"), data / "brick" / "train")
    shutil.copytree(os.path.join(fitted["data"], "brick", "test", "good"),
                    data / "brick" / "test" / "good")
    row = _eval(fitted, data, "brick", "--eval_PRO")[0]
    assert row["image_auroc"] is None and row["pixel_auroc"] is None and row["au_pro"] is None
    assert row["n_defect"] == 0 and row["tp"] == row["fn"] == 0
    assert row["fp"] + row["tn"] == 4 and row["fpr"] == row["fp"] / 4
    assert row["recall"] is None and row["threshold"] > 0


def test_per_image_and_per_type_results_equal_scikit_learn(fitted):
    row = _eval(fitted, fitted["data"], "brick")[0]
    run = os.path.join(fitted["save"], "ortho_resnet18_k20")
    with open(os.path.join(run, "per_image_brick.csv")) as fh:
        images = list(csv.DictReader(fh))
    assert len(images) == row["n_test"] == 12
    labels = np.array([int(r["label"]) for r in images])
    scores = np.array([float(r["score"]) for r in images])
    thr = row["threshold"]
    assert [r["verdict"] for r in images] == \
        ["anomalous" if s > thr else "normal" for s in scores]
    tn, fp, fn, tp = confusion_matrix(labels, scores > thr).ravel()
    assert (row["tp"], row["fp"], row["fn"], row["tn"]) == (tp, fp, fn, tn)
    assert row["f1"] == pytest.approx(f1_score(labels, scores > thr), abs=1e-6)
    with open(os.path.join(run, "per_type.csv")) as fh:
        types = [t for t in csv.DictReader(fh) if t["category"] == "brick"]
    assert sorted(t["defect"] for t in types) == ["blob", "patch", "scratch"]
    for t in types:
        pick = [r["defect"] in ("good", t["defect"]) for r in images]
        ref = roc_auc_score(labels[pick], scores[pick])
        assert float(t["image_auroc"]) == pytest.approx(ref, abs=1e-6)


@pytest.fixture(scope="module")
def calibration_dir(tmp_path_factory):
    """Other brick and gravel images (seed 1), laid out as a calibration folder with masks."""
    src = str(tmp_path_factory.mktemp("calsrc"))
    generate(src, ("brick",), n_train=1, n_good=8, n_defect=9, size=128, seed=1)
    cal = tmp_path_factory.mktemp("cal")
    shutil.copytree(os.path.join(src, "brick", "test"), cal, dirs_exist_ok=True)
    shutil.copytree(os.path.join(src, "brick", "ground_truth"), cal / "ground_truth")
    return cal


def _calibrated(fitted, cal, target, save, monkeypatch=None):
    train.main(train.get_args([
        "--data_path", fitted["data"], "--category", "brick", "--k", "20", "--no-pretrained",
        "--resize", "128", "--crop_size", "128", "--save_path", save, "--calibration_dir",
        str(cal), "--threshold_target", target]))
    return model_path(save, "ortho", "resnet18", 20, "brick")


def _scores(path, folder):
    rows = predict.main(predict.get_args([str(folder), "--model_path", path,
                                          "--save_pic=False", "--threshold", "0"]))
    return np.array([r["score"] for r in rows]), [r["map"] for r in rows]


def test_calibration_sets_the_best_f1_thresholds_on_calibration_images_only(
        fitted, calibration_dir, tmp_path, monkeypatch):
    from PIL import Image
    opened, real_open = [], Image.open

    def spy(fp, *args, **kwargs):
        opened.append(os.path.realpath(str(fp)))
        return real_open(fp, *args, **kwargs)
    monkeypatch.setattr(Image, "open", spy)
    path = _calibrated(fitted, calibration_dir, "f1", str(tmp_path / "f1"))
    monkeypatch.setattr(Image, "open", real_open)
    test_dir = os.path.realpath(os.path.join(fitted["data"], "brick", "test"))
    assert opened and not any(p.startswith(test_dir) for p in opened)
    thr = load_model(path)[0]["threshold"]
    assert thr["source"] == "calibration" and thr["target"] == "f1"
    assert thr["calibration"]["n_masks"] == 9 and thr["holdout"]["n_holdout"] == 2
    # oracle: scores of the calibration images by predict.py, F1 by scikit-learn
    labels, scores, maps, masks = [], [], [], []
    from orthoad_runtime.transforms import load_mask
    for folder in sorted(os.listdir(calibration_dir)):
        if folder == "ground_truth":
            continue
        s, m = _scores(path, calibration_dir / folder)
        files = sorted(os.listdir(calibration_dir / folder))
        labels += [int(folder != "good")] * len(s)
        scores += list(s)
        maps += m
        masks += [load_mask(str(calibration_dir / "ground_truth" / folder /
                                f.replace(".png", "_mask.png"))) > 127 if folder != "good"
                  else np.zeros(m[0].shape, bool) for f in files]
    labels, scores = np.array(labels), np.array(scores)
    best = max(f1_score(labels, scores > t) for t in np.concatenate([scores, scores - 1e-6]))
    assert f1_score(labels, scores > thr["image"]) == pytest.approx(best, abs=1e-9)
    px_s, px_y = np.concatenate([m.ravel() for m in maps]), np.concatenate(
        [m.ravel() for m in masks])
    f1_star = f1_score(px_y, px_s > thr["pixel"])
    grid = np.quantile(px_s, np.linspace(0.5, 0.9999, 300))
    assert f1_star >= max(f1_score(px_y, px_s > t) for t in grid) - 1e-9
    assert thr["pixel"] != thr["image"]


def test_calibration_at_a_false_positive_rate(fitted, calibration_dir, tmp_path):
    path = _calibrated(fitted, calibration_dir, "fpr=0.2", str(tmp_path / "fpr"))
    thr = load_model(path)[0]["threshold"]
    good, _ = _scores(path, calibration_dir / "good")
    t = thr["image"]
    assert (good > t * (1 + 1e-6)).mean() <= 0.2 and np.isclose(good, t, rtol=1e-6).any()
    assert (good >= t * (1 - 1e-6)).mean() > 0.2               # the lowest such threshold
    assert "at most 0.2 of the normal calibration images" in thr["rule"]


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.links, self.images = set(), [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "a" and "href" in a:
            self.links.append(a["href"])
        if tag in ("img", "script", "link", "iframe") and ("src" in a or "href" in a):
            self.images.append((a.get("alt", ""), a.get("src") or a.get("href")))


def test_report_is_complete_and_self_contained(fitted):
    _eval(fitted, fitted["data"], "all", "--eval_PRO", "--non_partial_AUC", "--report")
    page_path = os.path.join(fitted["save"], "ortho_resnet18_k20", "report.html")
    text = open(page_path, encoding="utf-8").read()
    page = _Page()
    page.feed(text)
    assert {"brick", "gravel", "metrics", "verdicts"} <= page.ids
    assert page.links and all(h.startswith("#") and h[1:] in page.ids for h in page.links)
    for category in ("brick", "gravel"):
        alts = {alt.split()[0] for alt, _ in page.images if alt.endswith(category)}
        assert alts == {"curves", "scores", "false_positive", "false_negative"}, alts
    for _, src in page.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    for column in ("au_pro", "paper_pro", "paper_roc", "image_auroc", "pixel_auroc"):
        assert f"<th>{column}</th>" in text


def test_calibrate_script_equals_calibration_at_fit_time(fitted, calibration_dir, tmp_path):
    from conftest import run_script
    at_fit = _calibrated(fitted, calibration_dir, "fpr=0.2", str(tmp_path / "a"))
    plain = model_path(fitted["save"], "ortho", "resnet18", 20, "brick")
    r = run_script("calibrate.py", "--model_path", plain, "--calibration_dir",
                   str(calibration_dir), "--threshold_target", "fpr=0.2")
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = load_model(at_fit)[0]["threshold"], load_model(plain)[0]["threshold"]
    assert a["rule"] == b["rule"]
    assert (a["image"], a["pixel"]) == pytest.approx((b["image"], b["pixel"]), rel=1e-6)
    r = run_script("calibrate.py", "--model_path", plain, "--calibration_dir",
                   os.path.join(fitted["data"], "brick", "test"))
    assert r.returncode == 2 and "is a test image of 'brick'" in r.stderr
