"""PatchCore (--method patchcore) against independent oracles: the greedy coreset against the
rule written plainly in float64, the patch features against Paddle's own pooling and
interpolation ops, the nearest-neighbour scores and the image score against a brute-force
float64 computation of the paper's formulas on the stored bank; every engine and both exports
against dygraph; every script end to end on the demo data; what PatchCore refuses."""
import json
import os
import shutil

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest
from PIL import Image

from conftest import run_script
from models import coreset
from models.backbone import Backbone
from models.patchcore import CHUNK, PatchCore, reference_scores
from modelfile import load_model, save_model
from pipeline import graphs
from pipeline import model as models_io
from pipeline.fit import threshold_rule
from utils import model_path

PARITY = 1e-4                   # of the score scale, as for the other methods' exports


# --------------------------------------------------------------------------- the coreset

@pytest.mark.parametrize("seed,n,d,picks,candidates,block", [
    (0, 3000, 128, 300, 4096, 256),      # candidates >= N: every point exact
    (1, 5000, 128, 400, 256, 64),        # few candidates: blocks end early, bounds at work
    (2, 4000, 24, 500, 64, 7),           # a block size that does not divide the picks
    (3, 600, 128, 600, 128, 32),         # every point picked
])
def test_coreset_picks_equal_the_plain_greedy_rule(seed, n, d, picks, candidates, block):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, d)) * rng.uniform(0.2, 3.0, d)).astype(np.float32)
    x[: n // 10] += 4.0                                    # clusters of unequal density
    start = int(rng.integers(n))
    got = coreset.greedy_coreset(x, picks, start, block=block, candidates=candidates)
    want = coreset.greedy_reference(x, picks, start)
    assert got.tolist() == want
    assert len(set(got.tolist())) == picks


def test_coreset_selection_uses_the_seeded_projection():
    x = np.random.default_rng(0).standard_normal((2000, 300)).astype(np.float32)
    picks, _ = coreset.select(x, 100, seed=5)
    proj = coreset.projection(300, 5)
    assert proj.shape == (300, coreset.PROJECTION_DIM)
    start = int(np.random.default_rng([5, 11]).integers(len(x)))
    assert picks.tolist() == coreset.greedy_reference(x @ proj, 100, start)
    assert coreset.select(x, 100, seed=5)[0].tolist() == picks.tolist()       # reproducible
    assert coreset.select(x, 100, seed=6)[0].tolist() != picks.tolist()


# --------------------------------------------------------------------------- the layer

@pytest.fixture(scope="module")
def backbone():
    return Backbone("resnet18", pretrained=False, seed=0)


@pytest.mark.parametrize("hw,dim", [((72, 104), 200), ((64, 64), 1024)])
def test_patch_features_equal_paddles_pooling_and_interpolation(backbone, hw, dim):
    """The matrices equal avg_pool2d (3 x 3, padding counted), bilinear interpolation of layer3
    to layer2's grid and adaptive average pooling over the channels (or none: resnet18 has 384
    channels, fewer than 1024)."""
    det = PatchCore(backbone, hw, dim=dim)
    x = paddle.to_tensor(np.random.default_rng(0).standard_normal((2, 3, *hw)).astype("float32"))
    with paddle.no_grad():
        y = det.embed(x).numpy()
        _, f2, f3 = backbone(x)
        a2 = F.avg_pool2d(f2, 3, 1, 1, exclusive=False)
        a3 = F.interpolate(F.avg_pool2d(f3, 3, 1, 1, exclusive=False), size=a2.shape[2:],
                           mode="bilinear", align_corners=False)
        cat = paddle.concat([a2, a3], 1)
        b, c, h, w = cat.shape
        z = cat.transpose([0, 2, 3, 1]).reshape([-1, 1, c])
        if det.k < c:
            z = F.adaptive_avg_pool1d(z, det.k)
        z = z.reshape([b, h * w, det.k]).numpy()
    assert det.k == min(dim, 384) and det.grid_hw == (h, w)
    assert np.abs(y - z).max() <= 1e-5 * np.abs(z).max()


@pytest.mark.parametrize("hw", [(64, 96), (128, 136)])      # one chunk; three chunks
def test_scores_equal_a_brute_force_float64_computation(backbone, hw):
    det = PatchCore(backbone, hw, dim=160)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 3, *hw)).astype("float32")
    with paddle.no_grad():
        y = det.embed(paddle.to_tensor(x)).numpy()
    flat = y.reshape(-1, det.k)
    base = flat[rng.choice(len(flat), 40, replace=False)]
    # clusters of 9 near one another (N_b(m*) close: weights well below 1) and lone points
    # (weights near 1), all near the features but not on them
    bank = np.concatenate([np.repeat(base[:20], 9, axis=0), base[20:]]) + \
        rng.normal(0, 0.03, (200, det.k)).astype(np.float32)
    det.set_bank(bank)
    scored = (rng.random(det.n_positions) > 0.3).astype(np.float32)
    assert det.n_positions > CHUNK or hw == (64, 96)
    with paddle.no_grad():
        amap, score = det.score(paddle.to_tensor(y), None, paddle.to_tensor(scored))
        dist, _ = det.distances(paddle.to_tensor(y), det.bank)
    ref_dist, ref_score = reference_scores(y, bank, scored)
    # float32 may pick another of nearly equidistant bank features (a cluster): its distance
    # differs by the expansion's rounding, well within the scale's 1e-4
    assert np.abs(dist.numpy() - ref_dist).max() <= PARITY * ref_dist.max()
    np.testing.assert_allclose(score.numpy(), ref_score, rtol=PARITY)
    # the map is the distances through the other methods' head; the weights lie in [0, 1)
    head = det.head(paddle.to_tensor(ref_dist.astype(np.float32)).reshape([-1, *det.grid_hw]))
    assert np.abs(amap.numpy() - head.numpy()).max() <= PARITY * ref_dist.max()
    weights = ref_score / np.array([ref_dist[i][scored > 0].max() for i in range(3)])
    assert ((0 <= weights) & (weights < 1)).all() and weights.min() < 0.95   # Eq. 7 at work


def test_compiled_engines_equal_dygraph(backbone, tmp_path):
    det = PatchCore(backbone, (128, 136), dim=160)
    x = np.random.default_rng(3).standard_normal((2, 3, 128, 136)).astype("float32")
    with paddle.no_grad():
        y = det.embed(paddle.to_tensor(x)).numpy()
    bank = np.ascontiguousarray(y.reshape(-1, det.k)[::11] + 0.1)
    det.set_bank(bank)
    scored = np.ones(det.n_positions, np.float32)
    scored[:40] = 0
    ref, _ = graphs.scorer("dygraph", det, {"bank": bank}, str(tmp_path))
    ref_maps, ref_scores = ref(x, scored)
    for engine in ("onnxruntime", "inference"):
        fn, used = graphs.scorer(engine, det, {"bank": bank}, str(tmp_path))
        maps, scores = fn(x, scored)
        assert used == engine
        assert np.abs(maps - ref_maps).max() <= PARITY * np.abs(ref_maps).max()
        np.testing.assert_allclose(scores, ref_scores, rtol=PARITY)


# --------------------------------------------------------------------------- the scripts

@pytest.fixture(scope="module")
def pc_fitted(demo_root, tmp_path_factory):
    """train.py --method patchcore on the demo data (resnet18, random weights, 128 px)."""
    save = str(tmp_path_factory.mktemp("pc"))
    r = run_script("train.py", "--data_path", demo_root, "--category", "all", "--method",
                   "patchcore", "--no-pretrained", "--resize", "128", "--crop_size", "128",
                   "--save_path", save, "--eval", "--eval_PRO", "--batch_size", "8")
    assert r.returncode == 0, r.stderr[-2000:]
    return {"save": save, "log": r.stderr, "out": r.stdout, "data": demo_root,
            "brick": model_path(save, "patchcore", "resnet18", 0, "brick", 0.1)}


def test_fit_keeps_a_coreset_of_the_fitted_images_and_thresholds_by_the_rule(pc_fitted):
    meta, arrays = load_model(pc_fitted["brick"])
    pc, thr = meta["patchcore"], meta["threshold"]
    assert meta["method"] == "patchcore" and meta["k"] == 384 and meta["grid"] == [16, 16]
    n_fit = meta["n_train"] - thr["n_holdout"]
    assert thr["n_holdout"] == 2 and pc["n_patches"] == n_fit * 256
    assert arrays["bank"].shape == (round(0.1 * pc["n_patches"]), 384) == (pc["bank_size"], 384)
    assert os.path.isdir(os.path.join(pc_fitted["save"], "patchcore_resnet18_c10"))
    # the thresholds: the rule on the held-out images, scored again here with the saved model
    model = models_io.load(pc_fitted["brick"])
    folder = os.path.join(pc_fitted["data"], "brick", "train", "good")
    x = np.stack([model.preprocess.load(os.path.join(folder, f))[0]
                  for f in thr["holdout_files"]])
    maps, scores = model.score(x)
    assert thr["image"] == pytest.approx(threshold_rule(scores), rel=1e-5)
    assert thr["pixel"] == pytest.approx(threshold_rule(maps.reshape(2, -1).max(axis=1)),
                                         rel=1e-5)
    # the held-out images are not in the bank: the digests record them as validation images
    from datasets.digest import DigestSets, digests
    sets = DigestSets(meta["digests"])
    held = digests([os.path.join(folder, f) for f in thr["holdout_files"]])
    assert set(held) <= sets.sets["validation"] and not set(held) & sets.sets["statistics"]


def test_image_score_is_the_papers_on_the_stored_bank_with_an_ignore_mask(pc_fitted):
    """predict's scores equal the float64 brute force on the model's bank; an ignore mask over
    the highest patch takes it out of the image score (and only it)."""
    from pipeline.detectors import from_model_file
    model = models_io.load(pc_fitted["brick"])
    det = model.detector
    test = os.path.join(pc_fitted["data"], "brick", "test", "scratch")
    files = [os.path.join(test, f) for f in sorted(os.listdir(test))[:3]]
    x = np.stack([model.preprocess.load(f)[0] for f in files])
    with paddle.no_grad():
        y = det.embed(paddle.to_tensor(x)).numpy()
    ref_dist, ref_score = reference_scores(y, model.arrays["bank"])
    detector = from_model_file(pc_fitted["brick"], engine="onnxruntime")
    got = detector.predict(files)
    np.testing.assert_allclose([p.score for p in got], ref_score, rtol=PARITY)
    star = int(np.argmax(ref_dist[0]))
    ignore = np.zeros(model.preprocess.input_hw, bool)
    r, c = divmod(star, det.grid_hw[1])
    ignore[r * 8:(r + 1) * 8, c * 8:(c + 1) * 8] = True           # the patch's block of pixels
    scored = np.ones(det.n_positions, np.float32)
    scored[star] = 0
    masked = detector.predict(files[0], ignore_mask=ignore)
    assert masked.score == pytest.approx(reference_scores(y[:1], model.arrays["bank"],
                                                          scored)[1][0], rel=PARITY)
    assert masked.score < got[0].score
    assert np.isnan(masked.anomaly_map[ignore]).all()
    assert "Eq. 7" in masked.record()["verdict_rule"]


def test_every_script_runs_patchcore_and_exports_agree(pc_fitted, tmp_path):
    demo, save, brick = pc_fitted["data"], pc_fitted["save"], pc_fitted["brick"]
    rows = {r["category"]: r for r in _csv(os.path.join(save, "patchcore_resnet18_c10",
                                                      "results.csv"))}
    assert float(rows["mean"]["image_auroc"]) > 0.5
    r = run_script("eval.py", "--data_path", demo, "--category", "brick", "--method", "patchcore",
                   "--save_path", save, "--eval_PRO")
    assert r.returncode == 0, r.stderr[-1500:]
    again = {x["category"]: x for x in _csv(os.path.join(save, "patchcore_resnet18_c10",
                                                       "results.csv"))}["brick"]
    for key in ("image_auroc", "pixel_auroc", "au_pro"):
        assert float(again[key]) == pytest.approx(float(rows["brick"][key]), abs=1e-6)
    image = os.path.join(demo, "brick", "test", "scratch", "000.png")
    r = run_script("predict.py", image, "--category", "brick", "--method", "patchcore",
                   "--save_path", save, "--output", str(tmp_path / "pred"))
    assert r.returncode == 0, r.stderr[-1500:]
    want = float(r.stdout.split("score ")[1].split()[0])
    calibration = tmp_path / "cal"
    shutil.copytree(os.path.join(demo, "gravel", "test"), calibration)   # another category's
    shutil.copytree(os.path.join(demo, "gravel", "ground_truth"), calibration / "ground_truth")
    copy = str(tmp_path / "brick.safetensors")
    shutil.copy(brick, copy)
    r = run_script("calibrate.py", "--model_path", copy, "--calibration_dir", str(calibration))
    assert r.returncode == 0, r.stderr[-1500:]
    assert json.loads(json.dumps(load_model(copy)[0]["threshold"]))["source"] == "calibration"
    for fmt in ("paddle", "onnx"):
        out = tmp_path / f"export_{fmt}"
        r = run_script("export_model.py", "--model_path", brick, "--save_dir", str(out),
                       "--format", fmt)
        assert r.returncode == 0, r.stderr[-1500:]
        deploy = json.loads((out / "deploy.json").read_text())
        assert deploy["model"]["method"] == "patchcore" and len(deploy["inputs"]) == 2
        graph = "model.onnx" if fmt == "onnx" else "model.json"
        r = run_script("infer.py", "--model_file", str(out / graph), "--input_file", image,
                       "--save_path", str(tmp_path / f"infer_{fmt}"))
        assert r.returncode == 0, r.stderr[-1500:]
        got = float(r.stdout.split("score ")[1].split()[0])
        assert got == pytest.approx(want, rel=PARITY)
    _export_parity(brick, tmp_path, demo)


def _export_parity(brick, tmp_path, demo):
    """Maps and scores of both exports against the model file on dygraph, with an ignore
    mask given at prediction time."""
    from orthoad_runtime.detector import Detector
    from pipeline.detectors import from_model_file
    folder = os.path.join(demo, "brick", "test", "blob")
    files = [os.path.join(folder, f) for f in sorted(os.listdir(folder))]
    ignore = np.zeros((128, 128), bool)
    ignore[:, :40] = True
    ref = from_model_file(brick, engine="dygraph").predict(files, ignore_mask=ignore)
    for fmt in ("paddle", "onnx"):
        det = Detector.from_export(str(tmp_path / f"export_{fmt}"))
        got = det.predict(files, ignore_mask=ignore)
        scale = max(np.nanmax(p.anomaly_map) for p in ref)
        for a, b in zip(got, ref):
            assert abs(a.score - b.score) <= PARITY * scale
            assert np.nanmax(np.abs(a.anomaly_map - b.anomaly_map)) <= PARITY * scale


def _csv(path):
    import csv
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_the_service_answers_patchcore_like_the_detector(pc_fitted):
    from pipeline.detectors import from_model_file
    from test_serving import Server
    run = os.path.dirname(pc_fitted["brick"])
    image = os.path.join(pc_fitted["data"], "brick", "test", "blob", "001.png")
    want = from_model_file(pc_fitted["brick"]).predict(image)
    srv = Server(run)
    try:
        status, body, _ = srv.post_image("/predict", image, category="brick")
    finally:
        srv.stop()
    assert status == 200, body
    assert body["score"] == pytest.approx(want.score, rel=PARITY)
    assert body["regions"] == want.regions and "Eq. 7" in body["verdict_rule"]


@pytest.mark.parametrize("extra,message", [
    (("--update",), "--update is not available for --method patchcore"),
    (("--precision", "int8"), "--precision int8 is not available for --method patchcore"),
    (("--k", "50"), "PatchCore's is --patchcore_dim"),
    (("--coreset_ratio", "0"), "--coreset_ratio 0.0 is out of range"),
    (("--save_sums",), "--save_sums stores a Gaussian's sums"),
    (("--method", "ortho", "--coreset_ratio", "0.01"), "--coreset_ratio belongs to --method "
                                                       "patchcore, not ortho"),
])
def test_what_patchcore_refuses_is_one_line(demo_root, tmp_path, extra, message):
    r = run_script("train.py", "--data_path", demo_root, "--category", "brick", "--method",
                   "patchcore", "--no-pretrained", "--save_path", str(tmp_path), *extra)
    assert r.returncode == 2 and message in r.stderr, r.stderr[-1500:]
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


@pytest.mark.parametrize("damage,message", [
    (lambda m, a: a.update(bank=a["bank"][:, :10].copy()), "holds 'bank' as float32"),
    (lambda m, a: a["bank"].__setitem__((0, 0), np.nan), "non-finite values"),
    (lambda m, a: m["patchcore"].update(dim=100), "has k=384, but PatchCore's dim 100"),
    (lambda m, a: m.update(grid=[32, 32]), "patch grid"),
    (lambda m, a: a.pop("bank"), "lacks bank"),
])
def test_a_crafted_patchcore_model_is_one_line(pc_fitted, tmp_path, damage, message):
    meta, arrays = load_model(pc_fitted["brick"])
    damage(meta, arrays)
    path = str(tmp_path / "brick.safetensors")
    save_model(path, meta, arrays)
    image = os.path.join(pc_fitted["data"], "brick", "test", "blob", "000.png")
    r = run_script("predict.py", image, "--model_path", path, "--output", str(tmp_path / "o"))
    assert r.returncode == 2 and message in r.stderr, r.stderr[-1500:]
    assert "Traceback" not in r.stderr


def test_an_ignore_mask_that_leaves_no_patch_is_one_line(pc_fitted, tmp_path):
    mask = np.full((128, 128), 255, np.uint8)
    mask[::8, ::8] = 0                    # pixels left, but no patch centre (4, 12, ...)
    Image.fromarray(mask).save(tmp_path / "mask.png")
    image = os.path.join(pc_fitted["data"], "brick", "test", "blob", "000.png")
    r = run_script("predict.py", image, "--model_path", pc_fitted["brick"], "--ignore_mask",
                   str(tmp_path / "mask.png"), "--output", str(tmp_path / "o"))
    assert r.returncode == 2 and "leaves none of the 16x16 patches scored" in r.stderr, \
        r.stderr[-1500:]
