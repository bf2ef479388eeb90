"""int8 backbones: the fit runs on the int8 graph calibrated on the recorded normal training
images (checked against a graph quantised directly with ONNX Runtime's own quantize_static, the
oracle), every engine path and the export give the same maps, and every misuse is one line."""
import json
import os

import numpy as np
import pytest

import export_model
import train
from conftest import run_script
from utils import model_path

FIT = ["--no-pretrained", "--k", "8", "--input_size", "64", "--batch_size", "8"]


@pytest.fixture(scope="module")
def int8_model(tmp_path_factory):
    from datasets.synthetic import generate
    root = tmp_path_factory.mktemp("int8")
    generate(str(root / "d"), ("brick",), n_train=14, n_good=3, n_defect=6, size=64)
    save = str(root / "o")
    rows = train.main(train.get_args(["--data_path", str(root / "d"), "--save_path", save,
                                      *FIT, "--precision", "int8", "--calibration_images", "8",
                                      "--int8_max_change", "1", "--eval", "--eval_PRO"]))
    return {"root": root, "data": str(root / "d"), "save": save, "rows": rows,
            "path": model_path(save, "ortho", "resnet18", 8, "brick")}


def test_int8_fit_equals_onnxruntime_quantisation_of_the_recorded_calibration(int8_model,
                                                                              tmp_path):
    """The oracle, in two parts. (1) The stored activation ranges are 1.5x the minimum and
    maximum of each tensor over the recorded calibration images, read here by running the
    float32 graph with those tensors as extra outputs. (2) ONNX Runtime's quantize_static, given
    those ranges (its calibration cache) on the float32 embedding graph, embeds the training
    images; their two-pass float64 mean equals the model's (so the stored ranges rebuild the
    same graph, and the fit used it)."""
    import onnx
    from onnxruntime import InferenceSession
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data
    from onnxruntime.quantization.preprocess import quant_pre_process

    from orthoad_runtime.transforms import load_rgb
    from modelfile import load_checked
    from pipeline import model as models_io
    from pipeline.graphs import build, default_cache
    meta, arrays = load_checked(int8_model["path"])
    assert meta["precision"] == "int8" and meta["engine"] == "onnxruntime int8"
    cal = meta["int8"]["calibration"]
    train_dir = os.path.join(int8_model["data"], "brick", "train", "good")
    assert cal["n_images"] == 8 and set(cal["files"]) <= set(os.listdir(train_dir))
    assert not set(cal["files"]) & set(meta["threshold"]["holdout_files"])
    model = models_io.load(int8_model["path"])
    src = os.path.join(build("embed", model.detector, default_cache(), "onnx"), "model.onnx")
    pre = model.preprocess
    quant_pre_process(src, str(tmp_path / "pre.onnx"), skip_symbolic_shape=True)

    ranges = meta["int8"]["ranges"]
    graph = onnx.load(str(tmp_path / "pre.onnx"))
    graph.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
                              for n in ranges if n not in {o.name for o in graph.graph.output})
    onnx.save(graph, str(tmp_path / "probe.onnx"))
    probe = InferenceSession(str(tmp_path / "probe.onnx"), providers=["CPUExecutionProvider"])
    xs = np.stack([pre.image(load_rgb(os.path.join(train_dir, f))) for f in cal["files"]])
    seen = dict(zip([o.name for o in probe.get_outputs()], probe.run(None, {"image": xs})))
    for name, (lo, hi) in ranges.items():
        t = seen[name]
        assert lo == pytest.approx(1.5 * min(t.min(), 0) if t.min() < 0 else t.min(), rel=1e-5)
        assert hi == pytest.approx(1.5 * t.max(), rel=1e-5), name

    save_tensors_data(TensorsData(CalibrationMethod.MinMax, {
        n: TensorData(lowest=np.float32(lo), highest=np.float32(hi))
        for n, (lo, hi) in ranges.items()}), str(tmp_path / "cache.json"))
    quantize_static(str(tmp_path / "pre.onnx"), str(tmp_path / "q.onnx"), None,
                    quant_format=QuantFormat.QDQ, op_types_to_quantize=["Conv"],
                    per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                    calibration_cache_path=str(tmp_path / "cache.json"))
    sess = InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"])
    files = sorted(os.listdir(train_dir))
    x = np.stack([pre.image(load_rgb(os.path.join(train_dir, f))) for f in files])
    y = sess.run(None, {"image": x})[0].astype(np.float64)            # [N, P, k]
    scale = np.abs(y).max()
    np.testing.assert_allclose(arrays["mean"], y.mean(axis=0), atol=1e-5 * scale)


def test_int8_model_export_and_engines_give_the_same_maps(int8_model, tmp_path):
    """eval on the model (int8 embedding graph + float32 head, cached), predict, and infer.py on
    the exported single-file int8 graph agree."""
    import infer
    import predict
    folder = os.path.join(int8_model["data"], "brick", "test", "blob")
    export_model.main(export_model.get_args(["--model_path", int8_model["path"], "--save_dir",
                                             str(tmp_path / "exp"), "--format", "onnx"]))
    deploy = json.loads((tmp_path / "exp" / "deploy.json").read_text())
    assert deploy["precision"] == "int8" and deploy["graph_file"] == "model_int8.onnx"
    assert deploy["int8"]["calibration"]["n_images"] == 8
    a = predict.main(predict.get_args([folder, "--model_path", int8_model["path"],
                                       "--save_pic", "false", "--output", str(tmp_path / "p")]))
    b = infer.main(infer.get_args(["--model_file", str(tmp_path / "exp"), "--input_file",
                                   folder, "--save_pic", "false", "--save_path",
                                   str(tmp_path / "i"), "--precision", "int8"]))
    for ra, rb in zip(a, b):
        np.testing.assert_allclose(rb["map"], ra["map"], rtol=1e-5,
                                   atol=1e-5 * np.nanmax(ra["map"]))
        assert ra["verdict"] == rb["verdict"]
    import eval as eval_script
    row = int8_model["rows"][0]                       # train.py --eval, from memory
    again = eval_script.main(eval_script.get_args([
        "--data_path", int8_model["data"], "--save_path", int8_model["save"], "--k", "8",
        "--eval_PRO", "--precision", "int8"]))[0]       # the saved model, graphs rebuilt
    for key in ("image_auroc", "pixel_auroc", "au_pro"):
        assert again[key] == pytest.approx(row[key], abs=1e-9), key


@pytest.mark.parametrize("case,expected", [
    ("fit_on_dygraph", "--precision int8 runs on ONNX Runtime, not --engine dygraph"),
    ("too_many_calibration_images", "--calibration_images 500: 'brick' has only"),
    ("eval_int8_on_fp32_model", "has no int8 graph (it was fitted in fp32): fit it with "
                                "train.py --precision int8"),
    ("eval_fp32_on_int8_model", "was fitted with the int8 backbone"),
    ("export_int8_as_paddle", "an int8 model is exported as ONNX"),
])
def test_int8_misuse_is_one_line(case, expected, int8_model, fitted, tmp_path):
    fp32 = model_path(fitted["save"], "ortho", "resnet18", 20, "brick")
    args = {
        "fit_on_dygraph": ["train.py", "--data_path", int8_model["data"], "--save_path",
                           str(tmp_path / "o"), *FIT, "--precision", "int8", "--engine",
                           "dygraph"],
        "too_many_calibration_images": ["train.py", "--data_path", int8_model["data"],
                                        "--save_path", str(tmp_path / "o"), *FIT,
                                        "--precision", "int8", "--calibration_images", "500"],
        "eval_int8_on_fp32_model": ["eval.py", "--data_path", fitted["data"], "--category",
                                    "brick", "--model_path", fp32, "--precision", "int8"],
        "eval_fp32_on_int8_model": ["eval.py", "--data_path", int8_model["data"],
                                    "--model_path", int8_model["path"], "--category", "brick",
                                    "--precision", "fp32"],
        "export_int8_as_paddle": ["export_model.py", "--model_path", int8_model["path"],
                                  "--save_dir", str(tmp_path / "e")],
    }[case]
    r = run_script(*args)
    lines = [line for line in r.stderr.splitlines() if "error:" in line]
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(lines) == 1, r.stderr[-1500:]
    assert expected in lines[0], lines[0]


def test_infer_int8_on_an_fp32_export_names_the_command(fitted, tmp_path):
    fp32 = model_path(fitted["save"], "ortho", "resnet18", 20, "brick")
    export_model.main(export_model.get_args(["--model_path", fp32, "--save_dir",
                                             str(tmp_path / "e"), "--format", "onnx"]))
    r = run_script("infer.py", "--model_file", str(tmp_path / "e" / "model.onnx"),
                   "--input_file", os.path.join(fitted["data"], "brick", "test", "good"),
                   "--precision", "int8")
    assert r.returncode == 2 and "export_model.py --format onnx --precision int8" in r.stderr


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Real colour photographs scikit-image ships (tissue: immunohistochemistry; retina), with
    the demo's defects: natural image statistics, unlike the grey textures."""
    from datasets.synthetic import generate
    root = tmp_path_factory.mktemp("photos")
    generate(str(root), ("tissue", "retina"), n_train=24, n_good=4, n_defect=6, size=128,
             seed=5)
    return str(root)


def test_int8_says_what_it_costs_against_an_fp32_fit_on_real_photographs(photos, tmp_path):
    """The int8 fit stores the change of the held-out images' scores against fp32; the oracle
    is a separate fp32 fit of the same data (its own held-out scores): the same median
    change, the same images. Beyond --int8_max_change the fit is refused with one line and
    nothing is saved."""
    base = ["--data_path", photos, "--no-pretrained", "--k", "32", "--batch_size", "8"]
    train.main(train.get_args([*base, "--category", "tissue", "--precision", "int8",
                               "--save_path", str(tmp_path / "q")]))
    train.main(train.get_args([*base, "--category", "tissue", "--save_path",
                               str(tmp_path / "f")]))
    from modelfile import read_meta
    m8 = read_meta(model_path(str(tmp_path / "q"), "ortho", "resnet18", 32, "tissue"))
    m32 = read_meta(model_path(str(tmp_path / "f"), "ortho", "resnet18", 32, "tissue"))
    assert m8["threshold"]["holdout_files"] == m32["threshold"]["holdout_files"]
    s8 = np.array(m8["threshold"]["holdout_scores"])
    s32 = np.array(m32["threshold"]["holdout_scores"])
    check = m8["int8"]["check"]
    assert check["score_change_median"] == pytest.approx(
        float(np.median(np.abs(s8 - s32) / s32)), abs=2e-5)
    assert check["score_change_median"] <= check["bound"] == 0.1
    assert 0 < check["embedding_change"] < 0.2 and check["convolutions"] == 15
    r = run_script("train.py", *base, "--category", "retina", "--precision", "int8",
                   "--int8_max_change", "0.05", "--save_path", str(tmp_path / "r"))
    err = [line for line in r.stderr.splitlines() if "error:" in line]
    assert r.returncode == 2 and len(err) == 1 and "changes the image scores" in err[0] and \
        "beyond --int8_max_change 0.05" in err[0]
    assert not os.path.exists(model_path(str(tmp_path / "r"), "ortho", "resnet18", 32, "retina"))


def test_a_dominant_convolution_stays_in_fp32(int8_model, tmp_path, monkeypatch):
    """check_int8 keeps in fp32 exactly the convolutions whose fp32 removes a fifth of the
    change (here made dominant by a measurement stand-in), and the int8 graph built from the
    record leaves them in float32."""
    import onnx

    from pipeline import int8 as int8_mod
    from pipeline import model as models_io
    from pipeline.graphs import build_int8, default_cache
    from pipeline import quantize
    model = models_io.load(int8_model["path"])
    nodes = quantize.conv_nodes(os.path.join(
        __import__("pipeline.graphs", fromlist=["build"]).build(
            "embed", model.detector, default_cache(), "onnx"), "model.onnx"))
    real = int8_mod._relative
    calls = {"n": 0}

    def stand_in(y8, y32):        # the 4th single-exclusion run pretends to remove 60 %
        calls["n"] += 1
        return real(y8, y32) * (0.4 if calls["n"] == 5 else 1.0)
    monkeypatch.setattr(int8_mod, "_relative", stand_in)
    files = sorted(os.path.join(int8_model["data"], "brick", "train", "good", f)
                   for f in os.listdir(os.path.join(int8_model["data"], "brick", "train",
                                                    "good")))[:2]
    rec = int8_mod.check_int8(dict(model.meta["int8"]), model.detector, files, "images",
                              model.preprocess, 2, None, "brick")
    assert rec["fp32_nodes"] == [nodes[3]] and rec["check"]["fp32_convolutions"] == 1
    graph = onnx.load(os.path.join(build_int8(model.detector, default_cache(), rec),
                                   "model.onnx")).graph
    quantised_inputs = {i for n in graph.node if n.op_type == "Conv" for i in n.input}
    dq = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    kept = [n for n in graph.node if n.op_type == "Conv" and not set(n.input) & dq]
    assert len(kept) == 1 and quantised_inputs
