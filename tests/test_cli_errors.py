"""The CLI error matrix: every bad input gives exit status 2, one line on stderr that names the
problem and the fix, and no traceback. Inputs that must WORK (16-bit, RGBA, palette, small
images) are checked too."""
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import run_script
from datasets.synthetic import generate

FAST = ["--no-pretrained", "--resize", "64", "--crop_size", "64", "--k", "4"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny valid data set, a fitted model and its export."""
    root = tmp_path_factory.mktemp("cli")
    data = root / "data"
    generate(str(data), ("brick",), n_train=6, n_good=2, n_defect=3, size=64, seed=1)
    out = root / "out"
    r = run_script("train.py", "--data_path", str(data), "--save_path", str(out), *FAST)
    assert r.returncode == 0, r.stderr
    model = out / "ortho_resnet18_k4" / "brick.safetensors"
    r = run_script("export_model.py", "--model_path", str(model), "--save_dir", str(root / "exp"))
    assert r.returncode == 0, r.stderr
    return {"root": root, "data": data, "out": out, "model": model, "exp": root / "exp"}


def _copy(base, tmp_path):
    dst = tmp_path / "data"
    shutil.copytree(base["data"], dst)
    return dst, dst / "brick"


def _train(data, tmp_path, *extra):
    return ("train.py", "--data_path", str(data), "--save_path", str(tmp_path / "o"), *FAST,
            *extra)


def _eval(data, base, *extra):
    return ("eval.py", "--data_path", str(data), "--save_path", str(base["out"]), "--k", "4",
            *extra)


def _infer(base, *extra, inp=None):
    e = base["exp"]
    return ("infer.py", "--model_file", str(e / "model.json"), "--params_file",
            str(e / "model.pdiparams"), "--input_file",
            str(inp or base["data"] / "brick" / "test" / "good"), "--save_path",
            str(base["root"] / "inf"), *extra)


def _case_missing_data(base, tmp):
    return _train(tmp / "nope", tmp), "is not a folder"


def _case_empty_data(base, tmp):
    (tmp / "empty").mkdir()
    return _train(tmp / "empty", tmp), "no known data layout"


def _case_unknown_category(base, tmp):
    return _train(base["data"], tmp, "--category", "carpet"), "category 'carpet' not found"


def _case_no_train_good(base, tmp):
    data, cat = _copy(base, tmp)
    shutil.rmtree(cat / "train")
    return _train(data, tmp, "--category", "brick"), "has no train/good"


def _case_empty_train_good(base, tmp):
    data, cat = _copy(base, tmp)
    for f in (cat / "train" / "good").iterdir():
        f.unlink()
    return _train(data, tmp), "holds 0 normal training image(s)"


def _case_calibration_without_good(base, tmp):
    cal = tmp / "cal"
    shutil.copytree(base["data"] / "brick" / "test" / "scratch", cal / "scratch")
    return _train(base["data"], tmp, "--calibration_dir", str(cal)), "has no good/ images"


def _case_calibration_f1_without_defects(base, tmp):
    cal = tmp / "cal"
    shutil.copytree(base["data"] / "brick" / "train" / "good", cal / "good")
    return _train(base["data"], tmp, "--calibration_dir", str(cal)), \
        "--threshold_target f1 needs defect images"


def _case_calibration_on_test_images(base, tmp):
    return _train(base["data"], tmp, "--calibration_dir", str(base["data"] / "brick" / "test")), \
        "is a test image of 'brick'"


def _case_bad_threshold_target(base, tmp):
    return _train(base["data"], tmp, "--calibration_dir", str(tmp), "--threshold_target",
                  "fpr=2"), "--threshold_target fpr=2 is not valid"


def _case_corrupt_png(base, tmp):
    data, cat = _copy(base, tmp)
    f = cat / "train" / "good" / "001.png"
    f.write_bytes(f.read_bytes()[:200])
    return _train(data, tmp), "cannot read image"


def _case_zero_byte(base, tmp):
    data, cat = _copy(base, tmp)
    (cat / "train" / "good" / "001.png").write_bytes(b"")
    return _train(data, tmp), "zero-byte"


def _case_text_as_png(base, tmp):
    data, cat = _copy(base, tmp)
    (cat / "train" / "good" / "001.png").write_text("not an image")
    return _train(data, tmp), "cannot read image"


def _case_mask_size(base, tmp):
    data, cat = _copy(base, tmp)
    Image.new("L", (10, 10)).save(cat / "ground_truth" / "blob" / "000_mask.png")
    return _eval(data, base), "fix the mask"


def _case_k_zero(base, tmp):
    return _train(base["data"], tmp, "--k", "0"), "--k 0 is out of range"


def _case_k_negative(base, tmp):
    return _train(base["data"], tmp, "--k", "-3"), "--k -3 is out of range"


def _case_k_too_large(base, tmp):
    return _train(base["data"], tmp, "--k", "449"), "larger than the feature dimension 448"


def _case_unknown_arch(base, tmp):
    return _train(base["data"], tmp, "--arch", "resnet34"), "invalid choice: 'resnet34'"


def _case_unknown_method(base, tmp):
    return _train(base["data"], tmp, "--method", "pca"), "invalid choice: 'pca'"


def _case_typo_flag(base, tmp):
    return _train(base["data"], tmp, "--eval_pro"), "unrecognized arguments: --eval_pro"


def _case_bad_bool(base, tmp):
    return _train(base["data"], tmp, "--eval=maybe"), "expected true or false"


def _case_input_size_too_small(base, tmp):
    return _train(base["data"], tmp, "--input_size", "16"), "--input_size 16 is too small"


def _case_input_size_not_stride(base, tmp):
    return _train(base["data"], tmp, "--input_size", "64", "100"), "not a multiple of the stride"


def _case_input_size_malformed(base, tmp):
    return _train(base["data"], tmp, "--input_size", "64x64"), "--input_size 64x64 is malformed"


def _case_input_size_and_crop(base, tmp):
    return _train(base["data"], tmp, "--input_size", "64", "64"), "give one or the other"


def _case_cell_not_dividing(base, tmp):
    return _train(base["data"], tmp, "--cell", "3"), "--cell 3 does not divide"


def _case_ignore_mask_everything(base, tmp):
    Image.new("L", (64, 64), 255).save(tmp / "all.png")
    return _train(base["data"], tmp, "--ignore_mask", str(tmp / "all.png")), \
        "covers every pixel"


def _case_predict_ignore_mask_everything(base, tmp):
    Image.new("L", (30, 20), 255).save(tmp / "all.png")
    return ("predict.py", str(base["data"] / "brick" / "test" / "good"), "--model_path",
            str(base["model"]), "--ignore_mask", str(tmp / "all.png")), "covers every pixel"


def _case_crop_larger_than_resize(base, tmp):
    return _train(base["data"], tmp, "--crop_size", "96"), "larger than --resize"


def _case_model_missing(base, tmp):
    return ("eval.py", "--data_path", str(base["data"]), "--save_path", str(tmp), "--k", "4"), \
        "does not exist: run train.py"


def _case_model_truncated(base, tmp):
    bad = tmp / "brick.safetensors"
    data = base["model"].read_bytes()
    bad.write_bytes(data[:len(data) // 2])
    return _eval(base["data"], base, "--model_path", str(bad), "--category", "brick"), \
        "is truncated"


def _case_model_other_k(base, tmp):
    return _eval(base["data"], base, "--model_path", str(base["model"]), "--category",
                 "brick", "--k", "8"), "--k 8 contradicts the model file"


def _case_model_other_arch(base, tmp):
    return _eval(base["data"], base, "--model_path", str(base["model"]), "--category",
                 "brick", "--arch", "wide_resnet50_2"), "(arch=resnet18)"


def _case_model_newer_format(base, tmp):
    from modelfile import read_tensors, write_tensors
    meta, arrays = read_tensors(str(base["model"]))
    newer = tmp / "brick.safetensors"
    write_tensors(str(newer), arrays, dict(meta, format_version="99"))
    return _eval(base["data"], base, "--model_path", str(newer), "--category", "brick"), \
        "format version 99"


def _case_unwritable_output(base, tmp):
    return ("train.py", "--data_path", str(base["data"]), "--save_path",
            str(base["model"]) + "/sub", *FAST), "cannot create output folder"


def _case_no_internet(base, tmp):
    return ("train.py", "--data_path", str(base["data"]), "--save_path", str(tmp), "--k", "4",
            "--resize", "64", "--crop_size", "64"), "--weights PATH"


def _case_weights_missing(base, tmp):
    return _train(base["data"], tmp, "--weights", str(tmp / "r18.pdparams")), \
        "--weights file"


def _case_predict_not_image(base, tmp):
    f = tmp / "notes.png"
    f.write_text("hello")
    return ("predict.py", str(f), "--model_path", str(base["model"])), "cannot read image"


def _case_predict_empty_folder(base, tmp):
    return ("predict.py", str(tmp), "--model_path", str(base["model"])), "holds no images"


def _case_export_missing_model(base, tmp):
    return ("export_model.py", "--model_path", str(tmp / "x.safetensors")), "does not exist"


def _case_infer_missing_model(base, tmp):
    args = list(_infer(base))
    args[args.index("--model_file") + 1] = str(tmp / "model.json")
    return tuple(args), "--model_file"


def _case_infer_missing_params(base, tmp):
    args = list(_infer(base))
    args[args.index("--params_file") + 1] = str(tmp / "model.pdiparams")
    return tuple(args), "--params_file"


def _case_infer_foreign_stats(base, tmp):
    d = json.loads((base["exp"] / "deploy.json").read_text())
    d["params_sha256"] = "0" * 64
    (tmp / "deploy.json").write_text(json.dumps(d))
    return _infer(base, "--stats", str(tmp / "deploy.json")), "does not belong"


def _case_infer_not_image(base, tmp):
    f = tmp / "x.png"
    f.write_text("text")
    return _infer(base, inp=f), "cannot read image"


def _case_infer_empty_folder(base, tmp):
    return _infer(base, inp=tmp), "holds no images"


def _case_infer_wrong_category(base, tmp):
    return _infer(base, "--category", "grass"), "not 'grass'"


def _case_infer_fp16(base, tmp):
    return _infer(base, "--precision", "fp16"), "invalid choice: 'fp16' (choose from 'auto', 'fp32', 'int8')"


def _case_export_batch_size(base, tmp):
    return ("export_model.py", "--model_path", str(base["model"]), "--batch_size", "4"), \
        "unrecognized arguments: --batch_size 4"


CASES = {name[len("_case_"):]: fn for name, fn in sorted(globals().items())
         if name.startswith("_case_")}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_gives_one_line_error(case, base, tmp_path, monkeypatch):
    args, expected = CASES[case](base, tmp_path)
    if case == "no_internet":   # empty weight cache and an unreachable proxy: a sure failure
        monkeypatch.setenv("HOME", str(tmp_path))
        monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
        monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    r = run_script(*args)
    err = r.stderr.strip()
    assert r.returncode == 2, (r.returncode, err[-2000:])
    assert "Traceback" not in r.stderr
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and expected in lines[0], err[-2000:]
    if os.environ.get("ORTHOAD_ERROR_LOG"):           # collects the messages for the docs
        with open(os.environ["ORTHOAD_ERROR_LOG"], "a") as fh:
            fh.write(f"{case}\t{lines[0]}\n")
    assert not any(f.endswith(".safetensors") for _, _, fs in os.walk(tmp_path / "o")
                   for f in fs)


def _write_variants(cat):
    good = cat / "train" / "good"
    rgb = np.asarray(Image.open(good / "000.png").convert("RGB"))
    Image.fromarray((rgb[:, :, 0].astype(np.uint16) * 257)).save(good / "100_16bit.png")
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])).save(
        good / "101_rgba.png")
    Image.fromarray(rgb).convert("P").save(good / "102_palette.png")
    Image.fromarray(rgb).resize((40, 40)).save(good / "103_small.png")


def test_16bit_rgba_palette_and_small_images_work(base, tmp_path):
    from orthoad_runtime.transforms import load_rgb
    data, cat = _copy(base, tmp_path)
    _write_variants(cat)
    good = cat / "train" / "good"
    ref = np.asarray(Image.open(good / "000.png").convert("RGB"))
    sixteen = load_rgb(str(good / "100_16bit.png"))
    assert sixteen.dtype == np.uint8 and sixteen.shape == ref.shape
    np.testing.assert_array_equal(sixteen[:, :, 1], ref[:, :, 0])   # 16-bit scaled, not clipped
    np.testing.assert_array_equal(load_rgb(str(good / "101_rgba.png")), ref)
    r = run_script(*_train(data, tmp_path))
    assert r.returncode == 0, r.stderr[-2000:]


def test_a_renamed_flag_still_works_and_names_its_new_name(caplog):
    """One flag, one meaning: predict.py's --save_maps became --save_server_maps (eval.py's
    --save_maps means float32 maps in the evaluators' layout), train.py's --stats became
    --stats_device (infer.py's --stats is the deploy.json): the old names reach the new flags,
    with a warning, for one release."""
    import predict
    with caplog.at_level("WARNING"):
        args = predict.get_args(["x.png", "--save_maps", "DIR"])
    assert args.save_server_maps == "DIR"
    assert "--save_maps is now called --save_server_maps" in caplog.text
    assert predict.get_args(["x.png"]).save_server_maps is None
    import train                       # train's --stats (where the statistics are computed)
    caplog.clear()
    with caplog.at_level("WARNING"):
        args = train.get_args(["--data_path", "d", "--stats", "cpu"])
    assert args.stats_device == "cpu" and "--stats is now called --stats_device" in caplog.text
