"""Every engine that requirements.txt installs against dygraph (the oracle): embeddings, maps,
scores and the statistics of a whole fit; graphs built once per run; ONNX export with external
data; a missing engine package is a one-line error."""
import os

import numpy as np
import pytest

import export_model
import infer
import predict
import train
from conftest import ROOT, run_script
from models.backbone import Backbone
from models.orthoad import OrthoAD
from models.projection import make_projection
from pipeline import graphs
from pipeline.backbones import get_backbone
from datasets import mvtec
from pipeline.fit import FitConfig, fit_category
from utils import model_path

ENGINES = ["inference", "onnxruntime"]
# Paddle Inference runs oneDNN, which orders the convolutions' sums differently (as infer.py)
TOLERANCE = {"inference": 2e-3, "onnxruntime": 1e-4}


@pytest.fixture(scope="module")
def detector():
    """Rectangular input with cells: the general case of the graphs."""
    bb = Backbone("resnet18", pretrained=False, seed=0)
    det = OrthoAD(bb, make_projection("ortho", 448, 8, 0), (96, 160), cell=2)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((det.n_cells, 8, 8)).astype(np.float32) * 0.3
    det.set_gaussian(rng.standard_normal((det.n_cells, 8)).astype(np.float32),
                     np.einsum("cij,ckj->cik", a, a) + np.eye(8, dtype=np.float32))
    return det


def _rel(a, b):
    a, b = (v.numpy() if hasattr(v, "numpy") else np.asarray(v) for v in (a, b))
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("engine", ENGINES)
def test_embeddings_maps_and_scores_equal_dygraph(engine, detector, tmp_path):
    x = np.random.default_rng(1).standard_normal((3, 3, 96, 160)).astype(np.float32)
    cache = str(tmp_path)
    embed, used = graphs.embedder(engine, detector, cache)
    ref_embed, _ = graphs.embedder("dygraph", detector, cache)
    assert used == engine
    assert _rel(embed(x), ref_embed(x)) < TOLERANCE[engine]
    mean, prec = detector.mean.numpy(), detector.precision.numpy()
    score, _ = graphs.scorer(engine, detector, {"mean": mean, "precision": prec}, cache)
    ref_score, _ = graphs.scorer("dygraph", detector, {"mean": mean, "precision": prec}, cache)
    (maps, scores), (ref_maps, ref_scores) = score(x), ref_score(x)
    assert maps.shape == ref_maps.shape == (3, 96, 160)
    assert _rel(maps, ref_maps) < TOLERANCE[engine]
    np.testing.assert_allclose(scores, ref_scores, rtol=TOLERANCE[engine])


@pytest.mark.parametrize("engine", ENGINES)
def test_whole_fit_statistics_equal_dygraph(engine, demo_root, tmp_path):
    """Mean and covariance within 1e-5 of their scale (per position for the covariance); the
    precision, which the covariance's conditioning amplifies, within 1e-4 of its scale."""
    bb = get_backbone("resnet18", False, None, 0)
    fits = {}
    for eng in ("dygraph", engine):
        model = fit_category(mvtec.read(demo_root, "gravel"),
                             FitConfig(k=8, resize=128, crop_size=128, engine=eng), bb,
                             str(tmp_path))
        assert model.meta["engine"] == eng
        fits[eng] = model.arrays
    a, b = fits[engine], fits["dygraph"]
    assert _rel(a["mean"], b["mean"]) < 1e-5
    cov_a = np.linalg.inv(a["precision"].astype(np.float64))
    cov_b = np.linalg.inv(b["precision"].astype(np.float64))
    assert (np.abs(cov_a - cov_b).max(axis=(1, 2)) / np.abs(cov_b).max(axis=(1, 2))).max() < 1e-5
    assert _rel(a["precision"], b["precision"]) < 1e-4


def test_device_statistics_path_gives_the_cpu_model(demo_root, tmp_path):
    """--stats device (Paddle float64 ops, the GPU path) on the CPU against the BLAS path."""
    bb = get_backbone("resnet18", False, None, 0)
    fits = {}
    for stats in ("cpu", "device"):
        cfg = FitConfig(k=8, resize=128, crop_size=128, engine="dygraph", stats=stats, cell=2)
        model = fit_category(mvtec.read(demo_root, "gravel"), cfg, bb, str(tmp_path))
        assert model.meta["statistics"].startswith(stats)
        fits[stats] = model
    a, b = fits["device"], fits["cpu"]
    assert _rel(a.arrays["mean"], b.arrays["mean"]) < 1e-6
    assert _rel(a.arrays["precision"], b.arrays["precision"]) < 1e-5
    assert a.meta["threshold"]["image"] == pytest.approx(b.meta["threshold"]["image"], rel=1e-6)


def test_graphs_are_built_once_for_every_run_folder(demo_root, tmp_path, caplog, monkeypatch):
    """Two categories and then a second run in a NEW run folder: the embed and score graphs
    are built once, in the user's cache, with a manifest of their files."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("ORTHOAD_CACHE", str(cache))
    for run in ("a", "b"):
        with caplog.at_level("INFO"):
            train.main(train.get_args(["--data_path", demo_root, "--category", "all", "--k", "8",
                                       "--no-pretrained", "--resize", "64", "--crop_size", "64",
                                       "--save_path", str(tmp_path / run), "--eval",
                                       "--engine", "onnxruntime"]))
    built = [r.message for r in caplog.records if r.message.startswith("built the")]
    assert len(built) == 2 and "embed" in built[0] and "score" in built[1]
    folders = sorted(os.listdir(cache))
    assert [f.split("-")[0] + "-" + f.split("-")[2] for f in folders] == \
        ["embed-onnx", "score-onnx"]
    assert all(os.path.isfile(cache / f / "manifest.json") for f in folders)
    assert not (tmp_path / "b" / "ortho_resnet18_k8" / "graphs").exists()


def test_a_missing_engine_package_is_a_one_line_error(demo_root, tmp_path):
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "onnxruntime.py").write_text("raise ImportError('not installed')\n")
    env = {"PYTHONPATH": f"{fake}:{ROOT}"}
    base = ["train.py", "--data_path", demo_root, "--category", "gravel", "--k", "4",
            "--no-pretrained", "--resize", "64", "--crop_size", "64", "--save_path",
            str(tmp_path / "o")]
    r = run_script(*base, "--engine", "onnxruntime", env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1 and "pip install onnxruntime" in lines[0], r.stderr[-2000:]
    r = run_script(*base, env=env)                          # auto: Paddle Inference instead
    assert r.returncode == 0, r.stderr[-2000:]
    assert "ONNX Runtime is not installed" in r.stderr and "embeddings by inference" in r.stderr


def test_onnx_export_with_external_data_runs_like_dygraph(demo_root, tmp_path, monkeypatch):
    """Above protobuf's 2 GB the Gaussian goes to model.onnx.data: forced here by a lower limit;
    ONNX Runtime's maps equal predict.py's (dygraph), and foreign files are refused."""
    from pipeline import export as export_mod
    train.main(train.get_args(["--data_path", demo_root, "--category", "brick", "--k", "8",
                               "--no-pretrained", "--input_size", "96", "128", "--save_path",
                               str(tmp_path / "o")]))
    path = model_path(str(tmp_path / "o"), "ortho", "resnet18", 8, "brick")
    monkeypatch.setattr(export_mod, "EXTERNAL_ABOVE", 1 << 20)
    out = str(tmp_path / "onnx")
    written = export_model.main(export_model.get_args(["--model_path", path, "--save_dir", out,
                                                       "--format", "onnx"]))
    assert sorted(os.path.basename(w) for w in written) == ["deploy.json", "model.onnx",
                                                             "model.onnx.data"]
    gaussian = 24 * 32 * 8 * 4 + 24 * 32 * 8 * 8 * 4                 # mean + precision, float32
    assert gaussian <= os.path.getsize(os.path.join(out, "model.onnx.data")) < gaussian + 8192
    import onnx
    graph = onnx.load(os.path.join(out, "model.onnx"), load_external_data=False).graph
    assert [i.name for i in graph.input] == ["image"]
    assert sorted(o.name for o in graph.output) == ["anomaly_map", "image_score"]
    folder = os.path.join(demo_root, "brick", "test", "blob")
    dy = predict.main(predict.get_args([folder, "--model_path", path, "--engine", "dygraph",
                                        "--save_pic=False"]))
    ort = infer.main(infer.get_args(["--model_file", os.path.join(out, "model.onnx"),
                                     "--input_file", folder, "--save_pic=False",
                                     "--batch_size", "2"]))
    for a, b in zip(dy, ort):
        assert a["map"].shape == (96, 128)
        np.testing.assert_allclose(b["map"], a["map"], rtol=1e-4, atol=1e-4 * a["map"].max())
        assert a["verdict"] == b["verdict"]
    paddle_dir = str(tmp_path / "paddle")
    export_model.main(export_model.get_args(["--model_path", path, "--save_dir", paddle_dir]))
    r = run_script("infer.py", "--model_file", os.path.join(out, "model.onnx"), "--params_file",
                   os.path.join(paddle_dir, "model.pdiparams"), "--input_file", folder)
    assert r.returncode == 2 and "takes no --params_file" in r.stderr
    with open(os.path.join(out, "model.onnx.data"), "r+b") as fh:     # a changed data file
        fh.seek(100)
        fh.write(b"\x00\x01\x02\x03")
    r = run_script("infer.py", "--model_file", os.path.join(out, "model.onnx"), "--input_file",
                   folder)
    assert r.returncode == 2 and "SHA-256 differs" in r.stderr
