import csv
import io
import json
import os

import numpy as np
import paddle
import pytest

import eval as eval_script
from modelfile import load_model
from pipeline import model as models_io
from pipeline.results import results_table
from utils import model_path


def test_regression_guard_demo_quality_floors(fitted):
    """REGRESSION GUARD, not an oracle: floors a few points below what this code measured when
    the test was written (random-init resnet18, seed 0, k=20, 128 px, 16 training images per
    category; image / pixel AUROC: brick 0.8125 / 0.9175, gravel 0.8438 / 0.7392; chance is 0.5).
    The oracle checks of the same pipeline are the tests below."""
    rows = {r["category"]: r for r in fitted["rows"]}
    assert set(rows) == {"brick", "gravel"}
    for cat, bars in {"brick": (0.75, 0.88), "gravel": (0.75, 0.70)}.items():
        assert rows[cat]["image_auroc"] >= bars[0], rows[cat]
        assert rows[cat]["pixel_auroc"] >= bars[1], rows[cat]
        assert 0.3 <= rows[cat]["au_pro"] <= 1.0
    table = list(csv.DictReader(io.StringIO(fitted["results_csv"])))   # as train wrote it
    assert [r["category"] for r in table] == ["brick", "gravel", "mean"]
    mean = np.mean([rows[c]["image_auroc"] for c in rows])
    assert float(table[-1]["image_auroc"]) == pytest.approx(mean, abs=1e-6)


def _oracle_embeddings(backbone, w, files, size):
    """Independent path: layer maps -> Paddle's nearest interpolate -> concatenation -> W in
    float64 (the definition; the model projects per layer and upsamples channels-last)."""
    from orthoad_runtime.transforms import Preprocess, load_rgb
    pre = Preprocess(size, size)
    out = []
    with paddle.no_grad():
        for f in files:
            f1, f2, f3 = backbone(paddle.to_tensor(pre.image(load_rgb(f))[None]))
            g = f1.shape[2:]
            up = [paddle.nn.functional.interpolate(t, size=g, mode="nearest").numpy()
                  for t in (f2, f3)]
            emb = np.concatenate([f1.numpy()] + up, axis=1)[0].astype(np.float64)  # [F, h, w]
            out.append(np.einsum("fhw,fk->hwk", emb, w.astype(np.float64)).reshape(-1, w.shape[1]))
    return np.stack(out)                                                      # [N, P, k]


def _oracle_gaussian(y, eps):
    mu = y.mean(axis=0)
    c = y - mu
    cov = np.einsum("npk,npl->pkl", c, c) / (len(y) - 1) + eps * np.eye(y.shape[2])
    return mu, np.linalg.inv(cov)


def test_fit_and_threshold_equal_a_float64_oracle(fitted):
    """The saved Gaussian equals a two-pass float64 fit of independently computed embeddings of
    every training image; the threshold equals the rule applied to the held-out images scored by
    an oracle fitted on the others (SciPy blur on scikit-image's bilinear resize)."""
    from scipy.ndimage import gaussian_filter
    from skimage.transform import resize as sk_resize

    from pipeline.backbones import get_backbone
    meta, arrays = load_model(model_path(fitted["save"], "ortho", "resnet18", 20, "gravel"))
    assert meta["linalg"]["path"] == "ctypes"
    train_dir = os.path.join(fitted["data"], "gravel", "train", "good")
    files = sorted(os.path.join(train_dir, f) for f in os.listdir(train_dir))
    y = _oracle_embeddings(get_backbone("resnet18", False, None, 0), arrays["projection"],
                           files, 128)
    mu, prec = _oracle_gaussian(y, 0.01)
    np.testing.assert_allclose(arrays["mean"], mu, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(arrays["precision"], prec, rtol=1e-3,
                               atol=1e-4 * np.abs(prec).max())
    held = [i for i, f in enumerate(files)
            if os.path.basename(f) in meta["threshold"]["holdout_files"]]
    assert len(held) == meta["threshold"]["n_holdout"] == 2
    rest = [i for i in range(len(files)) if i not in held]
    mu_r, prec_r = _oracle_gaussian(y[rest], 0.01)
    d = y[held] - mu_r
    dist = np.sqrt(np.einsum("npk,pkl,npl->np", d, prec_r, d)).reshape(len(held), 32, 32)
    scores = [gaussian_filter(sk_resize(m, (128, 128), order=1, mode="edge",
                                        anti_aliasing=False), sigma=4).max() for m in dist]
    np.testing.assert_allclose(meta["threshold"]["holdout_scores"], scores, rtol=1e-4)
    s = np.array(scores)
    assert meta["threshold"]["image"] == pytest.approx(
        max(s.max(), s.mean() + 3 * s.std(ddof=1)), rel=1e-4)


def test_metrics_equal_scikit_learn_on_the_written_maps(fitted, tmp_path):
    """eval.py's figures against scikit-learn (pixel and image AUROC) and a direct argsort
    AU-PRO on the .tiff maps it wrote; the image score is the map's maximum."""
    import tifffile
    from sklearn.metrics import roc_auc_score

    from conftest import official_au_pro
    from datasets import mvtec
    from orthoad_runtime.transforms import load_mask
    row = eval_script.main(eval_script.get_args([
        "--data_path", fitted["data"], "--category", "gravel", "--k", "20", "--save_path",
        fitted["save"], "--eval_PRO", "--save_maps", str(tmp_path)]))[0]
    samples = mvtec.read(fitted["data"], "gravel").test
    maps, masks = [], []
    for smp in samples:
        stem = os.path.splitext(os.path.basename(smp.path))[0]
        maps.append(tifffile.imread(tmp_path / "gravel" / "test" / smp.defect / f"{stem}.tiff"))
        masks.append(load_mask(smp.masks[0]) > 127 if smp.has_mask else
                     np.zeros(maps[-1].shape, bool))
    maps, masks = np.stack(maps), np.stack(masks)
    labels = [s.label for s in samples]
    assert row["image_auroc"] == pytest.approx(roc_auc_score(labels, maps.max(axis=(1, 2))),
                                               abs=1e-9)
    assert row["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()),
                                               abs=1e-9)
    assert row["au_pro"] == pytest.approx(official_au_pro(masks, maps), abs=1e-6)


def test_eval_script_reproduces_train_eval(fitted, tmp_path):
    args = eval_script.get_args(["--data_path", fitted["data"], "--category", "brick",
                                 "--arch", "resnet18", "--k", "20", "--save_path",
                                 fitted["save"], "--eval_PRO", "--non_partial_AUC",
                                 "--save_pic=True", "--save_maps", str(tmp_path / "maps"),
                                 "--batch_size", "5"])
    rows = eval_script.main(args)
    train_row = [r for r in fitted["rows"] if r["category"] == "brick"][0]
    for key in ("image_auroc", "pixel_auroc", "au_pro"):
        assert rows[0][key] == pytest.approx(train_row[key], abs=1e-6)
    # the paper protocol against the loop oracle on the maps eval.py itself wrote (images and
    # input are both 128 px, so the .tiff maps are the maps it scored): no second engine run,
    # whose round-off differs from the first one's by more than the tolerance
    import tifffile

    from datasets import mvtec
    from datasets.loading import load_test_item
    from test_metrics import _paper_oracle
    model = models_io.load(model_path(fitted["save"], "ortho", "resnet18", 20, "brick"))
    samples = mvtec.read(fitted["data"], "brick").test
    masks = np.stack([load_test_item(s, model.preprocess).mask for s in samples])
    maps = np.stack([tifffile.imread(tmp_path / "maps" / "brick" / "test" / s.defect /
                                     (os.path.splitext(os.path.basename(s.path))[0] + ".tiff"))
                     for s in samples])
    pro, roc = _paper_oracle(masks, maps.astype(np.float64))
    assert rows[0]["paper_pro"] == pytest.approx(pro, abs=1e-6)
    assert rows[0]["paper_roc"] == pytest.approx(roc, abs=1e-6)
    pics = os.listdir(os.path.join(fitted["save"], "ortho_resnet18_k20", "pictures", "brick"))
    assert len(pics) == rows[0]["n_test"]
    tiffs = sorted(os.listdir(tmp_path / "maps" / "brick" / "test" / "scratch"))
    assert tiffs[0] == "000.tiff"
    m = tifffile.imread(tmp_path / "maps" / "brick" / "test" / "scratch" / "000.tiff")
    assert m.dtype == np.float32 and m.shape == (128, 128)


def test_eval_size_original_matches_input_size_when_sizes_agree(fitted):
    # demo images are 128 px and the model input is 128 px: both protocols see the same maps
    base = ["--data_path", fitted["data"], "--category", "gravel", "--arch", "resnet18", "--k",
            "20", "--save_path", fitted["save"], "--eval_PRO"]
    a = eval_script.main(eval_script.get_args(base))[0]
    b = eval_script.main(eval_script.get_args(base + ["--eval_size", "original"]))[0]
    for key in ("pixel_auroc", "au_pro"):
        assert a[key] == pytest.approx(b[key], abs=1e-5)


def test_model_file_is_self_describing_and_reloads_the_fitted_model(fitted, tmp_path):
    """The model as fitted (in memory) against the model saved and loaded back: the same
    arrays bit for bit, the same metadata, the same maps."""
    from datasets import mvtec
    from pipeline.backbones import get_backbone
    from pipeline.fit import FitConfig, fit_category
    path = model_path(fitted["save"], "ortho", "resnet18", 20, "brick")
    meta, arrays = load_model(path)
    assert meta["method"] == "ortho" and meta["k"] == 20 and meta["crop_size"] == 128
    assert meta["weights_source"] == "random:seed=0" and len(meta["weights_sha256"]) == 64
    assert meta["threshold"]["n_holdout"] == 2 and meta["threshold"]["image"] > 0
    assert "paddle" in meta["versions"]
    assert arrays["precision"].shape == (32 * 32, 20, 20)
    fitted_model = fit_category(mvtec.read(fitted["data"], "brick"),
                                FitConfig(k=20, resize=128, crop_size=128, engine="dygraph"),
                                get_backbone("resnet18", False, None, 0), None)
    saved = fitted_model.save(str(tmp_path / "brick.safetensors"))
    loaded = models_io.load(saved)
    for name in fitted_model.arrays:
        np.testing.assert_array_equal(loaded.arrays[name], fitted_model.arrays[name])
    assert loaded.meta == json.loads(json.dumps(fitted_model.meta))
    x = paddle.to_tensor(np.random.default_rng(0).standard_normal((2, 3, 128, 128))
                         .astype("float32"))
    with paddle.no_grad():
        a, b = fitted_model.detector(x), loaded.detector(x)
    np.testing.assert_array_equal(a[0].numpy(), b[0].numpy())
    np.testing.assert_array_equal(a[1].numpy(), b[1].numpy())


def test_same_seed_gives_identical_statistics(demo_root, tmp_path):
    import train
    paths = []
    for run in ("a", "b"):
        args = train.get_args(["--data_path", demo_root, "--category", "gravel", "--k", "8",
                               "--no-pretrained", "--resize", "128", "--crop_size", "128",
                               "--save_path", str(tmp_path / run)])
        train.main(args)
        paths.append(model_path(str(tmp_path / run), "ortho", "resnet18", 8, "gravel"))
    (_, a), (_, b) = load_model(paths[0]), load_model(paths[1])
    for name in ("projection", "mean", "precision"):
        np.testing.assert_array_equal(a[name], b[name])


def test_degenerate_data_gives_defined_results(tmp_path):
    """Constant training images, a test set without defects: finite model, n/a metrics."""
    from PIL import Image

    import train
    root = tmp_path / "data" / "flat"
    for sub in ("train/good", "test/good"):
        (root / sub).mkdir(parents=True)
    for i in range(4):
        Image.new("RGB", (64, 64), (120, 120, 120)).save(root / "train" / "good" / f"{i}.png")
    for i in range(2):
        Image.new("RGB", (64, 64), (120, 120, 121 + i)).save(root / "test" / "good" / f"{i}.png")
    args = train.get_args(["--data_path", str(tmp_path / "data"), "--k", "6", "--no-pretrained",
                           "--resize", "64", "--crop_size", "64", "--save_path",
                           str(tmp_path / "o"), "--eval", "--eval_PRO"])
    row = train.main(args)[0]
    assert row["image_auroc"] is None and row["pixel_auroc"] is None and row["au_pro"] is None
    _, arrays = load_model(model_path(str(tmp_path / "o"), "ortho", "resnet18", 6, "flat"))
    # identical images: every embedding equals the mean, the covariance is eps I exactly
    np.testing.assert_allclose(arrays["precision"], np.broadcast_to(100.0 * np.eye(6),
                                                                    arrays["precision"].shape),
                               rtol=1e-4, atol=1e-3)
    assert results_table([row]).count("n/a") == 10   # 5 metrics, category and mean rows
