"""Outputs a production line consumes (original-size masks, regions), ignore masks, and the
incremental update, against independent oracles (SciPy's labelling, PIL's resize, a fit on all
the images)."""
import csv
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

import export_model
import infer
import predict
import train
from conftest import run_script
from modelfile import load_model
from utils import model_path

FIT = ["--k", "8", "--no-pretrained", "--input_size", "96", "160"]


def _fit(data, save, category="brick", extra=()):
    train.main(train.get_args(["--data_path", str(data), "--category", category,
                               "--save_path", str(save), *FIT, *extra]))
    return model_path(str(save), "ortho", "resnet18", 8, category)


@pytest.fixture(scope="module")
def odd_image(demo_root, tmp_path_factory):
    """A defective brick image at another size than the model's input (200 x 150)."""
    folder = tmp_path_factory.mktemp("odd")
    src = os.path.join(demo_root, "brick", "test", "scratch", "000.png")
    Image.open(src).resize((200, 150), Image.BILINEAR).save(folder / "part.png")
    return folder / "part.png"


def test_masks_and_regions_at_the_original_resolution(demo_root, odd_image, tmp_path):
    path = _fit(demo_root, tmp_path / "m")
    out = tmp_path / "pred"
    first = predict.main(predict.get_args([str(odd_image), "--model_path", path, "--output",
                                           str(tmp_path / "first"), "--save_pic=False"]))[0]
    thr = float(np.quantile(first["map"], 0.97))          # a pixel threshold with regions
    row = predict.main(predict.get_args([str(odd_image), "--model_path", path, "--output",
                                         str(out), "--threshold", str(thr)]))[0]
    record = json.loads((out / "regions" / "part.json").read_text())
    mask = np.asarray(Image.open(out / "masks" / "part.png"))
    assert mask.shape == (150, 200) and set(np.unique(mask)) <= {0, 255}
    # oracle: PIL's bilinear resize of the input-size map, thresholded; SciPy's 8-labelling
    full = np.asarray(Image.fromarray(row["map"]).resize((200, 150), Image.BILINEAR))
    np.testing.assert_array_equal(mask > 0, full > thr)
    lab, n = ndimage.label(full > thr, structure=np.ones((3, 3)))
    assert record["n_regions"] == n >= 1 and record["verdict"] == row["verdict"]
    expected = []
    for i, sl in enumerate(ndimage.find_objects(lab), start=1):
        vals = full[sl][lab[sl] == i]
        expected.append(([sl[1].start, sl[0].start, sl[1].stop, sl[0].stop], len(vals),
                         float(vals.max()), float(vals.mean())))
    got = [(r["box"], r["area"], r["peak_score"], r["mean_score"]) for r in record["regions"]]
    expected.sort(key=lambda e: -e[1])
    assert [(b, a) for b, a, _, _ in got] == [(b, a) for b, a, _, _ in expected]
    np.testing.assert_allclose([g[2:] for g in got], [e[2:] for e in expected], rtol=1e-5)
    assert record["largest_region_area"] == expected[0][1] == row["largest_region_area"]
    # the ONNX export gives the same outputs
    exp = tmp_path / "onnx"
    export_model.main(export_model.get_args(["--model_path", path, "--save_dir", str(exp),
                                             "--format", "onnx"]))
    inf = tmp_path / "inf"
    rows = infer.main(infer.get_args(["--model_file", str(exp / "model.onnx"), "--input_file",
                                      str(odd_image.parent), "--save_path", str(inf),
                                      "--threshold", str(thr), "--save_pic=False"]))
    assert rows[0]["n_regions"] == n
    other = json.loads((inf / "regions" / "part.json").read_text())
    assert [r["box"] for r in other["regions"]] == [r["box"] for r in record["regions"]]
    with open(inf / "predictions.csv") as fh:
        table = list(csv.DictReader(fh))
    assert table[0]["n_regions"] == str(n) and table[0]["largest_region_area"] == \
        str(expected[0][1])


def test_ignored_pixels_never_raise_a_score_a_region_or_a_verdict(demo_root, tmp_path):
    # the ignore mask covers the left half of the image, at the images' own size (128 x 128)
    ignore = np.zeros((128, 128), np.uint8)
    ignore[:, :64] = 255
    mask_file = tmp_path / "ignore.png"
    Image.fromarray(ignore).save(mask_file)
    plain = _fit(demo_root, tmp_path / "plain")
    masked = _fit(demo_root, tmp_path / "masked", extra=("--ignore_mask", str(mask_file)))
    (pm, pa), (mm, ma) = load_model(plain), load_model(masked)
    np.testing.assert_array_equal(pa["precision"], ma["precision"])     # statistics unchanged
    assert ma["ignore"].shape == (96, 160) and ma["ignore"][:, :80].all()
    assert not ma["ignore"][:, 80:].any()
    # the hold-out threshold uses the mask: each masked score is the max of the other pixels
    a, b = pm["threshold"]["holdout_scores"], mm["threshold"]["holdout_scores"]
    assert all(y <= x + 1e-6 for x, y in zip(a, b)) and any(y < x - 1e-6 for x, y in zip(a, b))
    # a defect painted inside the ignored half: no score, region or verdict from it
    img = np.asarray(Image.open(os.path.join(demo_root, "brick", "test", "good", "000.png")))
    img = img.copy()
    img[40:80, 10:50] = 0
    part = tmp_path / "parts" / "dark.png"
    part.parent.mkdir()
    Image.fromarray(img).save(part)
    free = predict.main(predict.get_args([str(part), "--model_path", plain, "--save_pic=False",
                                          "--output", str(tmp_path / "p1")]))[0]
    kept = predict.main(predict.get_args([str(part), "--model_path", masked, "--save_pic=False",
                                          "--output", str(tmp_path / "p2")]))[0]
    assert np.isnan(kept["map"][:, :80]).all()
    assert kept["score"] == pytest.approx(float(free["map"][:, 80:].max()), rel=1e-6)
    assert free["score"] > kept["score"]
    record = json.loads((tmp_path / "p2" / "regions" / "dark.json").read_text())
    assert record["regions"] and all(r["box"][0] >= 64 for r in record["regions"])  # right half
    # the export carries the mask; Paddle Inference gives the same score
    exp = tmp_path / "exp"
    export_model.main(export_model.get_args(["--model_path", masked, "--save_dir", str(exp)]))
    assert "ignore_mask" in json.loads((exp / "deploy.json").read_text())
    inferred = infer.main(infer.get_args(["--model_file", str(exp / "model.json"),
                                          "--input_file", str(part), "--save_path",
                                          str(tmp_path / "i"), "--enable_mkldnn=False",
                                          "--save_pic=False"]))[0]
    assert inferred["score"] == pytest.approx(kept["score"], rel=1e-4)
    assert inferred["verdict"] == kept["verdict"]
    # a mask given at prediction time adds to the model's
    extra = np.zeros((96, 160), np.uint8)
    extra[:, 80:120] = 255
    Image.fromarray(extra).save(tmp_path / "extra.png")
    more = predict.main(predict.get_args([str(part), "--model_path", masked, "--save_pic=False",
                                          "--ignore_mask", str(tmp_path / "extra.png"),
                                          "--output", str(tmp_path / "p3")]))[0]
    assert np.isnan(more["map"][:, :120]).all() and np.isfinite(more["map"][:, 120:]).all()


def _split(demo_root, tmp_path):
    """gravel's 16 training images as two roots (10 + 6) and the union."""
    roots = {}
    files = sorted(os.listdir(os.path.join(demo_root, "gravel", "train", "good")))
    for name, chosen in (("a", files[:10]), ("b", files[10:]), ("all", files)):
        good = tmp_path / name / "gravel" / "train" / "good"
        good.mkdir(parents=True)
        for f in chosen:
            shutil.copy(os.path.join(demo_root, "gravel", "train", "good", f), good / f)
        roots[name] = tmp_path / name
    return roots


def _shapes(path):
    from modelfile import read_header
    return {name: entry[1] for name, entry in read_header(path)[1].items()}


def test_update_equals_a_fit_on_all_the_images(demo_root, tmp_path):
    roots = _split(demo_root, tmp_path)
    updated = _fit(roots["a"], tmp_path / "m", "gravel", ("--save_sums",))
    before, shapes = load_model(updated)[0], _shapes(updated)
    assert "sums_s2_upper" in shapes and shapes["sums_s2_upper"] == (24 * 40, 8 * 9 // 2)
    train.main(train.get_args(["--data_path", str(roots["b"]), "--category", "gravel",
                               "--save_path", str(tmp_path / "m"), "--k", "8", "--update"]))
    whole = _fit(roots["all"], tmp_path / "w", "gravel")
    (meta, a), (_, b) = load_model(updated), load_model(whole)
    assert meta["n_train"] == 16 and meta["sums"]["n_images"] == 16
    assert len(meta["updates"]) == 1 and meta["updates"][0]["n_images"] == 6
    np.testing.assert_allclose(a["mean"], b["mean"], atol=1e-5 * np.abs(b["mean"]).max())
    cov_a = np.linalg.inv(a["precision"].astype(np.float64))
    cov_b = np.linalg.inv(b["precision"].astype(np.float64))
    assert (np.abs(cov_a - cov_b).max(axis=(1, 2)) / np.abs(cov_b).max(axis=(1, 2))).max() < 1e-5
    # the threshold is learned again: the earlier held-out scores and one new held-out image
    thr = meta["threshold"]
    assert thr["n_holdout"] == before["threshold"]["n_holdout"] + 1
    n_old = before["threshold"]["n_holdout"]
    assert thr["holdout_scores"][:n_old] == before["threshold"]["holdout_scores"]
    s = np.array(thr["holdout_scores"])
    assert thr["image"] == pytest.approx(max(s.max(), s.mean() + 3 * s.std(ddof=1)))
    assert _shapes(updated) == shapes                     # the same arrays, the sums included


def test_bad_updates_are_refused_with_one_line(demo_root, tmp_path):
    roots = _split(demo_root, tmp_path)
    no_sums = _fit(roots["a"], tmp_path / "n", "gravel")
    r = run_script("train.py", "--data_path", str(roots["b"]), "--category", "gravel",
                   "--save_path", str(tmp_path / "n"), "--k", "8", "--update")
    assert r.returncode == 2 and "fit it again with train.py --save_sums" in r.stderr
    sums = _fit(roots["a"], tmp_path / "s", "gravel", ("--save_sums",))
    big = tmp_path / "big" / "gravel" / "train" / "good"
    big.mkdir(parents=True)
    Image.open(os.path.join(roots["b"], "gravel", "train", "good",
                            sorted(os.listdir(roots["b"] / "gravel" / "train" / "good"))[0])
               ).resize((256, 256)).save(big / "x.png")
    before = open(sums, "rb").read()
    r = run_script("train.py", "--data_path", str(tmp_path / "big"), "--category", "gravel",
                   "--save_path", str(tmp_path / "s"), "--k", "8", "--update")
    assert r.returncode == 2 and "is 256x256, not a size of the model's training images" in \
        r.stderr
    import paddle
    paddle.seed(7)
    paddle.save(paddle.vision.models.resnet18(pretrained=False).state_dict(),
                str(tmp_path / "w.pdparams"))
    r = run_script("train.py", "--data_path", str(roots["b"]), "--category", "gravel",
                   "--save_path", str(tmp_path / "s"), "--k", "8", "--update", "--weights",
                   str(tmp_path / "w.pdparams"))
    assert r.returncode == 2 and "differ from those the model was fitted with" in r.stderr
    assert open(sums, "rb").read() == before and os.path.isfile(no_sums)
