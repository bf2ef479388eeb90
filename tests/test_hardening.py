"""Crafted model and deploy files get one-line refusals (never a traceback, never an output outside
the folders the user named), and the defects a review found stay fixed."""
import csv
import json
import os
import shutil
import struct

import numpy as np
import pytest
from PIL import Image

from conftest import run_script
from modelfile import read_tensors, write_tensors
from utils import model_path


@pytest.fixture(scope="module")
def real(fitted):
    return model_path(fitted["save"], "ortho", "resnet18", 20, "brick")


def _raw(path, header, data=b""):
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw + data)


def _parts(path):
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
        return header, fh.read()


def _with_meta(src, dst, change):
    file_meta, arrays = read_tensors(src)
    meta = json.loads(file_meta["meta"])
    change(meta, arrays)
    file_meta["meta"] = json.dumps(meta)
    write_tensors(dst, arrays, file_meta)


def _header_change(change):
    def make(src, dst):
        header, data = _parts(src)
        change(header)
        _raw(dst, header, data)
    return make


def _meta_change(change):
    return lambda src, dst: _with_meta(src, dst, change)


def _first_entry(header):
    return next(k for k in header if k != "__metadata__")


CRAFTED = {
    "entry_is_a_number": _header_change(lambda h: h.__setitem__(_first_entry(h), 7)),
    "entry_without_offsets": _header_change(
        lambda h: h[_first_entry(h)].pop("data_offsets")),
    "offsets_as_strings": _header_change(
        lambda h: h[_first_entry(h)].__setitem__("data_offsets", ["0", "8"])),
    "metadata_not_json": _header_change(
        lambda h: h["__metadata__"].__setitem__("meta", "{not json")),
    "metadata_a_json_list": _header_change(
        lambda h: h["__metadata__"].__setitem__("meta", "[1, 2]")),
    "format_version_not_a_number": _header_change(
        lambda h: h["__metadata__"].__setitem__("format_version", "two")),
    "metadata_without_arch": _meta_change(lambda m, a: m.pop("arch")),
    "mean_one_column_short": _meta_change(
        lambda m, a: a.__setitem__("mean", np.ascontiguousarray(a["mean"][:, :-1]))),
    "category_climbs_out": _meta_change(lambda m, a: m.__setitem__("category", "../../../x")),
    "nan_in_precision": _meta_change(lambda m, a: a["precision"].__setitem__((3, 1, 1),
                                                                            np.nan)),
    "huge_precision": _meta_change(lambda m, a: a["precision"].__setitem__((0, 0, 0), 1e30)),
    "k_zero": _meta_change(lambda m, a: m.__setitem__("k", 0)),
    "eps_negative": _meta_change(lambda m, a: m.__setitem__("eps", -1.0)),
    "threshold_nan": _meta_change(lambda m, a: m["threshold"].__setitem__("image", float("nan"))),
    "grid_mismatch": _meta_change(lambda m, a: m.__setitem__("grid", [7, 7])),
    "cell_not_dividing": _meta_change(lambda m, a: m.__setitem__("cell", 3)),
    "projection_wrong_shape": _meta_change(
        lambda m, a: a.__setitem__("projection", np.zeros((10, 20), np.float32))),
    "weights_source_odd": _meta_change(lambda m, a: m.__setitem__("weights_source", 42)),
    "negative_diagonal": _meta_change(lambda m, a: a["precision"].__setitem__((0, 0, 0), -1.0)),
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_model_file_gets_one_line_and_writes_nothing(case, real, fitted, tmp_path):
    """predict.py on each crafted file: exit 2, one line naming the file, no traceback, and
    no folder appears anywhere under the test folder but the copy's own."""
    work = tmp_path / "a" / "b" / "c"
    work.mkdir(parents=True)
    bad = work / "brick.safetensors"
    CRAFTED[case](real, str(bad))
    image = os.path.join(fitted["data"], "brick", "test", "good", "000.png")
    r = run_script("predict.py", image, "--model_path", str(bad))
    lines = [line for line in r.stderr.splitlines() if "error:" in line]
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-1500:]
    assert len(lines) == 1 and str(bad) in lines[0], r.stderr[-1500:]
    assert sorted(os.listdir(tmp_path)) == ["a"] and sorted(os.listdir(work)) == [bad.name]


def test_the_real_model_still_loads_and_names_outputs_by_its_file(real, fitted, tmp_path):
    """A valid model whose metadata names another category: outputs go under the file's name."""
    dst = tmp_path / "renamed.safetensors"
    _with_meta(real, str(dst), lambda m, a: m.__setitem__("category", "other"))
    image = os.path.join(fitted["data"], "brick", "test", "good", "000.png")
    r = run_script("predict.py", image, "--model_path", str(dst), "--save_pic", "false")
    assert r.returncode == 0, r.stderr[-1500:]
    assert (tmp_path / "predict" / "renamed" / "regions" / "000.json").is_file()


def _export(fitted, real, tmp_path, fmt):
    out = tmp_path / fmt
    r = run_script("export_model.py", "--model_path", real, "--save_dir", str(out),
                   "--format", fmt)
    assert r.returncode == 0, r.stderr[-1500:]
    return out


def _infer(out, image, fmt, tmp_path, *extra):
    model = out / ("model.onnx" if fmt == "onnx" else "model.json")
    return run_script("infer.py", "--model_file", str(model), "--input_file", image,
                      "--save_path", str(tmp_path / "inf"), "--save_pic", "false", *extra)


@pytest.mark.parametrize("change,expected", [
    (lambda d: d.__setitem__("data_file", "../../elsewhere.data"), "data_file"),
    (lambda d: d["model"].__setitem__("category", "../x"), "category"),
    (lambda d: d.__setitem__("input_size", [96, 96]), "input_size"),
    (lambda d: d["threshold"].__setitem__("image", "high"), "image"),
    (lambda d: d.__setitem__("ignore_mask", "not base64 png"), "ignore mask"),
    (lambda d: d.__setitem__("deploy_version", 99), "newer than this code"),
    (lambda d: d["preprocess"].__setitem__("std", [0, 1, 1]), "std"),
])
def test_crafted_deploy_file_gets_one_line(change, expected, fitted, real, tmp_path):
    out = _export(fitted, real, tmp_path, "onnx")
    deploy = json.loads((out / "deploy.json").read_text())
    change(deploy)
    (out / "deploy.json").write_text(json.dumps(deploy))
    image = os.path.join(fitted["data"], "brick", "test", "good", "000.png")
    r = _infer(out, image, "onnx", tmp_path)
    lines = [line for line in r.stderr.splitlines() if "error:" in line]
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(lines) == 1, r.stderr
    assert expected in lines[0], lines[0]


def test_infer_verifies_the_graph_file_it_runs(fitted, real, tmp_path):
    """A changed model.json (not only model.pdiparams) is refused before Paddle loads it."""
    out = _export(fitted, real, tmp_path, "paddle")
    graph = out / "model.json"
    graph.write_text(graph.read_text().replace('"', '"', 1) + " ")
    image = os.path.join(fitted["data"], "brick", "test", "good", "000.png")
    r = _infer(out, image, "paddle", tmp_path)
    assert r.returncode == 2 and "model.json' (SHA-256 differs)" in r.stderr, r.stderr[-800:]


def test_backbone_weights_of_another_shape_are_refused(tmp_path):
    """A state dict with the right names but a narrower layer: one line naming it (Paddle's
    set_state_dict would only warn and keep that layer random)."""
    from paddle.vision import models
    from safetensors.numpy import save_file
    state = {k: v.numpy() for k, v in models.resnet18().state_dict().items()}
    state["layer2.0.conv1.weight"] = np.ascontiguousarray(state["layer2.0.conv1.weight"][:64])
    save_file(state, str(tmp_path / "w.safetensors"))
    from datasets.synthetic import generate
    generate(str(tmp_path / "d"), ("brick",), n_train=4, n_good=1, n_defect=1, size=64)
    r = run_script("train.py", "--data_path", str(tmp_path / "d"), "--weights",
                   str(tmp_path / "w.safetensors"), "--k", "4", "--save_path",
                   str(tmp_path / "o"))
    assert r.returncode == 2 and "'layer2.0.conv1.weight' is float32 [64, 64, 3, 3], the " \
        "network needs float32 [128, 64, 3, 3]" in r.stderr, r.stderr[-800:]


def test_update_after_calibration_keeps_the_earlier_held_out_scores(tmp_path):
    """calibrate.py keeps the hold-out record under 'holdout'; an update then learns its
    threshold from those scores and the new ones (not from the new images alone)."""
    import train
    from datasets.synthetic import generate
    from modelfile import read_meta
    data, new = tmp_path / "d", tmp_path / "new"
    generate(str(data), ("brick",), n_train=20, n_good=2, n_defect=3, size=64)
    generate(str(new), ("brick",), n_train=4, n_good=1, n_defect=1, size=64, seed=9)
    common = ["--k", "6", "--no-pretrained", "--input_size", "64", "--save_path",
              str(tmp_path / "o")]
    train.main(train.get_args(["--data_path", str(data), "--save_sums", *common]))
    path = model_path(str(tmp_path / "o"), "ortho", "resnet18", 6, "brick")
    before = read_meta(path)["threshold"]["holdout_scores"]
    cal = tmp_path / "cal"
    shutil.copytree(data / "brick" / "train" / "good", cal / "good")
    r = run_script("calibrate.py", "--model_path", path, "--calibration_dir", str(cal),
                   "--threshold_target", "fpr=0.1", "--data_path", str(data))
    assert r.returncode == 0, r.stderr[-1000:]
    train.main(train.get_args(["--data_path", str(new), "--update", *common]))
    after = read_meta(path)["threshold"]
    assert after["holdout_scores"][:len(before)] == before
    assert len(after["holdout_scores"]) == len(before) + 1 and after["image"] is not None


def test_csv_quotes_commas_and_outputs_of_one_stem_do_not_overwrite(fitted, tmp_path):
    """'a,b.png' and 'a,b.jpg': predictions.csv parses back with the csv module (commas
    quoted), and the two images get two masks and two regions files."""
    src = os.path.join(fitted["data"], "brick", "test", "scratch", "000.png")
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(src, folder / "a,b.png")
    Image.open(src).save(folder / "a,b.jpg", quality=95)
    real = model_path(fitted["save"], "ortho", "resnet18", 20, "brick")
    r = run_script("predict.py", str(folder), "--model_path", real, "--output",
                   str(tmp_path / "out"), "--save_pic", "false")
    assert r.returncode == 0, r.stderr[-1000:]
    rows = list(csv.DictReader(open(tmp_path / "out" / "predictions.csv")))
    assert sorted(os.path.basename(r["path"]) for r in rows) == ["a,b.jpg", "a,b.png"]
    assert sorted(os.listdir(tmp_path / "out" / "masks")) == ["a,b_jpg.png", "a,b_png.png"]
    regions = {json.load(open(tmp_path / "out" / "regions" / f))["image"]
               for f in os.listdir(tmp_path / "out" / "regions")}
    assert {os.path.basename(p) for p in regions} == {"a,b.jpg", "a,b.png"}


def test_paper_protocol_leaves_unscored_pixels_out():
    """Unscored (NaN) columns give the figures of the maps with those columns cut off (the
    oracle: the protocol on the smaller maps); before, argmax over NaN picked the wrong image."""
    import metrics
    from conftest import official_case
    gts, maps = official_case(1, 0.5, None)
    maps = maps.copy()
    maps[:, :, -3:] = np.nan                      # three unscored columns on every map
    pro, roc = metrics.paper_pro_roc(gts, maps)
    ref_pro, ref_roc = metrics.paper_pro_roc(gts[:, :, :-3], maps[:, :, :-3])
    assert pro == pytest.approx(ref_pro, abs=1e-12) and roc == pytest.approx(ref_roc, abs=1e-12)


def test_a_new_fit_refuses_to_replace_a_model_made_otherwise(fitted, tmp_path):
    save = tmp_path / "models"
    shutil.copytree(fitted["save"], save)
    base = ["train.py", "--data_path", fitted["data"], "--category", "brick", "--k", "20",
            "--no-pretrained", "--resize", "128", "--crop_size", "128", "--save_path", str(save)]
    path = model_path(str(save), "ortho", "resnet18", 20, "brick")
    before = open(path, "rb").read()
    r = run_script(*base, "--seed", "3")
    assert r.returncode == 2 and "holds a model made with other settings (" in r.stderr
    assert "--overwrite" in r.stderr and open(path, "rb").read() == before
    r = run_script(*base, "--seed", "3", "--overwrite")
    assert r.returncode == 0 and open(path, "rb").read() != before


def test_the_cell_of_a_camera_frame_is_found():
    """2448 x 2048 for wide_resnet50_2 at k = 300: a 512 x 612 grid, whose sides share only 1,
    2 and 4; the cell is a rectangle within the 4.5 GB budget."""
    from pipeline.geometry import STATS_BUDGET, choose_cell
    ch, cw = choose_cell((512, 612), 300)
    assert 512 % ch == 0 and 612 % cw == 0
    assert (512 // ch) * (612 // cw) * 12 * 300 ** 2 <= STATS_BUDGET
    assert choose_cell((64, 64), 100) == 1 and choose_cell((512, 512), 100) == 4


def test_rectangular_cells_fit_the_pooled_gaussian_of_their_members():
    """Cells of 2 x 3 positions: the cell's Gaussian equals a float64 two-pass fit on the
    embeddings of its 6 positions (the oracle)."""
    from models.gaussian import PatchGaussian, cell_members
    rng = np.random.default_rng(0)
    y = rng.standard_normal((7, 4 * 6, 3)).astype(np.float32)     # 4 x 6 grid, k = 3
    members = cell_members((4, 6), (2, 3))
    g = PatchGaussian(eps=0.01, members=members).fit([y[:4], y[4:]])
    for c, pos in enumerate(members):
        rows = y[:, pos, :].reshape(-1, 3).astype(np.float64)
        cov = np.cov(rows, rowvar=False) + 0.01 * np.eye(3)
        np.testing.assert_allclose(g.mean_[c], rows.mean(axis=0), atol=1e-6)
        np.testing.assert_allclose(g.precision_[c], np.linalg.inv(cov), rtol=1e-4, atol=1e-5)


def test_few_held_out_images_are_warned_about(tmp_path, caplog):
    import train
    from datasets.synthetic import generate
    generate(str(tmp_path / "d"), ("brick",), n_train=8, n_good=1, n_defect=1, size=64)
    with caplog.at_level("WARNING"):
        train.main(train.get_args(["--data_path", str(tmp_path / "d"), "--k", "4",
                                   "--no-pretrained", "--save_path", str(tmp_path / "o")]))
    assert "the threshold comes from only 1 held-out image(s) (with one image it is 1.1 x " \
        "its score)" in caplog.text


def test_a_damaged_cached_graph_is_rebuilt(demo_root, tmp_path, monkeypatch, caplog):
    from datasets import mvtec
    from pipeline import model as models_io
    from pipeline.backbones import get_backbone
    from pipeline.fit import FitConfig, fit_category
    monkeypatch.setenv("ORTHOAD_CACHE", str(tmp_path / "cache"))
    m = fit_category(mvtec.read(demo_root, "gravel"), FitConfig(k=4, resize=64, crop_size=64,
                                                                engine="onnxruntime"),
                     get_backbone("resnet18", False, None, 0), None)
    m.save(str(tmp_path / "g.safetensors"))
    model = models_io.load(str(tmp_path / "g.safetensors")).use_engine("onnxruntime")
    x = np.zeros((1, 3, 64, 64), np.float32)
    ref = model.score(x)[1]
    folder = next(p for p in (tmp_path / "cache").iterdir() if p.name.startswith("score-"))
    onnx = folder / "model.onnx"
    onnx.write_bytes(onnx.read_bytes()[:1000])                   # a damaged disk, say
    with caplog.at_level("WARNING"):
        again = models_io.load(str(tmp_path / "g.safetensors")).use_engine("onnxruntime")
    assert "is unusable (model.onnx does not match its SHA-256 in the manifest)" in caplog.text
    assert again.engine == "onnxruntime"
    np.testing.assert_allclose(again.score(x)[1], ref, rtol=1e-6)


def test_an_engine_failing_at_run_time_falls_back_under_auto_and_stops_otherwise(demo_root,
                                                                                 caplog):
    from pipeline.graphs import _Guarded
    from utils import UserError

    def broken(x):
        raise RuntimeError("kernel exploded")
    auto = _Guarded(broken, "onnxruntime", "auto", lambda: (lambda x: "dygraph ran"), "scoring")
    with caplog.at_level("WARNING"):
        assert auto(None) == "dygraph ran" and auto.engine == "dygraph"
    assert "failed while running the scoring graph (RuntimeError: kernel exploded)" in \
        caplog.text
    strict = _Guarded(broken, "onnxruntime", "onnxruntime", lambda: None, "scoring")
    with pytest.raises(UserError, match="--engine onnxruntime failed .*kernel exploded"):
        strict(None)


@pytest.mark.parametrize("script", ["eval", "predict", "export", "calibrate"])
def test_model_path_behaves_the_same_in_every_script(script, fitted, tmp_path):
    """With --model_path the file says what it is: model flags left at their defaults are not
    looked at (the file is k=20; the default --k is 100), a written one that contradicts it is
    the same one-line error everywhere."""
    real = model_path(fitted["save"], "ortho", "resnet18", 20, "brick")
    shutil.copy(real, tmp_path / "brick.safetensors")
    path = str(tmp_path / "brick.safetensors")
    image = os.path.join(fitted["data"], "brick", "test", "good", "000.png")
    cal = tmp_path / "cal"
    shutil.copytree(os.path.join(fitted["data"], "brick", "train", "good"), cal / "good")
    base = {"eval": ["eval.py", "--data_path", fitted["data"], "--category", "brick"],
            "predict": ["predict.py", image, "--save_pic", "false"],
            "export": ["export_model.py", "--save_dir", str(tmp_path / "exp")],
            "calibrate": ["calibrate.py", "--calibration_dir", str(cal), "--threshold_target",
                          "fpr=0.1", "--data_path", fitted["data"]]}[script]
    ok = run_script(*base, "--model_path", path)
    assert ok.returncode == 0, ok.stderr[-1500:]
    bad = run_script(*base, "--model_path", path, "--k", "8")
    lines = [line for line in bad.stderr.splitlines() if "error:" in line]
    assert bad.returncode == 2 and len(lines) == 1, bad.stderr[-1500:]
    assert "--k 8 contradicts the model file" in lines[0] and "(k=20)" in lines[0]
    other = run_script(*base, "--model_path", path, "--category", "grass")
    lines = [line for line in other.stderr.splitlines() if "error:" in line]
    assert other.returncode == 2 and len(lines) == 1, other.stderr[-1500:]
    want = "category 'grass' not found" if script == "eval" else \
        "--category grass contradicts the model file"   # eval reads the data first: no grass
    assert want in lines[0]
