import os

import numpy as np
import pytest

import export_model
import infer
import predict
import train
from modelfile import load_model
from utils import model_path


def _fit(data, save, crop, category="gravel", extra=()):
    geometry = ["--resize", "256", "--crop_size", str(crop)] if crop else []
    args = train.get_args(["--data_path", data, "--category", category, "--k", "8",
                           "--no-pretrained", "--save_path", save, *geometry, *extra])
    train.main(args)
    return model_path(save, "ortho", "resnet18", 8, category)


GEOMETRIES = {"crop256": (256, ()), "crop224": (224, ()),
              "crop216": (216, ()),               # grid 54 / 27 / 14: index upsampling
              "rect_cells": (None, ("--input_size", "96", "160", "--cell", "2"))}


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
def test_predict_and_paddle_inference_agree(demo_root, tmp_path, geometry):
    crop, extra = GEOMETRIES[geometry]
    path = _fit(demo_root, str(tmp_path / "m"), crop, extra=extra)
    shape = (crop, crop) if crop else (96, 160)
    exp = str(tmp_path / "export")
    export_model.main(export_model.get_args(["--model_path", path, "--save_dir", exp]))
    assert sorted(os.listdir(exp)) == ["deploy.json", "model.json", "model.pdiparams"]
    folder = os.path.join(demo_root, "gravel", "test", "blob")
    dy = predict.main(predict.get_args([folder, "--model_path", path, "--output",
                                        str(tmp_path / "pred")]))
    assert len([f for f in os.listdir(tmp_path / "pred") if f.endswith(".png")]) == len(dy)
    # oneDNN (infer.py's default) computes the convolutions in another order: looser tolerance
    for mkldnn, tol in (("False", 1e-4), ("True", 2e-3)):
        out = tmp_path / f"inf_{mkldnn}"
        st = infer.main(infer.get_args(["--model_file", f"{exp}/model.json", "--params_file",
                                        f"{exp}/model.pdiparams", "--input_file", folder,
                                        "--save_path", str(out), "--batch_size", "2",
                                        "--cpu_threads", "1", "--enable_mkldnn", mkldnn]))
        assert [r["path"] for r in dy] == [r["path"] for r in st]
        for a, b in zip(dy, st):
            assert a["map"].shape == shape
            np.testing.assert_allclose(a["map"], b["map"], rtol=tol, atol=tol)
            assert a["score"] == pytest.approx(b["score"], rel=tol / 10)
            assert a["verdict"] == b["verdict"] != "unknown"
        assert os.path.isfile(out / "predictions.csv")


def test_the_fit_opens_training_images_only(demo_root, tmp_path, monkeypatch):
    """The threshold must come from normal training images: every image the fit opens (held-out
    ones included) is one of train/good, and each of them is opened."""
    from PIL import Image
    opened, real_open = [], Image.open

    def spy(fp, *args, **kwargs):
        opened.append(os.path.abspath(str(fp)))
        return real_open(fp, *args, **kwargs)
    monkeypatch.setattr(Image, "open", spy)
    path = _fit(demo_root, str(tmp_path / "a"), 256, "brick")
    train = os.path.abspath(os.path.join(demo_root, "brick", "train", "good"))
    assert sorted(set(opened)) == sorted(os.path.join(train, f) for f in os.listdir(train))
    assert load_model(path)[0]["threshold"]["n_holdout"] == 2


def test_threshold_override_and_boolean_flags(demo_root, tmp_path):
    path = _fit(demo_root, str(tmp_path / "m"), 256, "brick")
    img = os.path.join(demo_root, "brick", "test", "good", "000.png")
    low = predict.main(predict.get_args([img, "--model_path", path, "--threshold", "0",
                                         "--save_pic=False"]))
    high = predict.main(predict.get_args([img, "--model_path", path, "--threshold", "1e9",
                                          "--save_pic", "false"]))
    assert low[0]["verdict"] == "anomalous" and high[0]["verdict"] == "normal"
    assert "picture" not in low[0] and "picture" not in high[0]
    # a bare boolean before the positional input keeps the input (it used to swallow it)
    out = tmp_path / "pics"
    rows = predict.main(predict.get_args(["--save_pic", img, "--model_path", path, "--output",
                                          str(out)]))
    assert rows[0]["path"] == img and os.path.isfile(rows[0]["picture"])
    exp = str(tmp_path / "export")
    export_model.main(export_model.get_args(["--model_path", path, "--save_dir", exp]))
    base = ["--model_file", f"{exp}/model.json", "--params_file", f"{exp}/model.pdiparams",
            "--input_file", img, "--save_path", str(tmp_path / "inf")]
    args = infer.get_args(["--enable_mkldnn", "--save_pic", "--enable_benchmark", *base])
    assert (args.enable_mkldnn, args.save_pic, args.enable_benchmark, args.use_gpu) == \
        (True, True, True, False)
    args = infer.get_args([*base, "--save_pic", "no", "--enable_mkldnn=false"])
    assert (args.save_pic, args.enable_mkldnn) == (False, False)
    assert infer.main(args)[0]["verdict"] == "normal"
