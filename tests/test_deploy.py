import os
import shutil

import numpy as np
import pytest

import export_model
import infer
import predict
import train
from utils import load_model, model_path


def _fit(data, save, crop, category="gravel", extra=()):
    args = train.get_args(["--data_path", data, "--category", category, "--k", "8",
                           "--no-pretrained", "--resize", "256", "--crop_size", str(crop),
                           "--save_path", save, *extra])
    train.main(args)
    return model_path(save, "ortho", "resnet18", 8, category)


@pytest.mark.parametrize("crop", [256, 224, 216])      # 216: grid 54 / 27 / 14, index upsampling
def test_predict_and_paddle_inference_agree(demo_root, tmp_path, crop):
    path = _fit(demo_root, str(tmp_path / "m"), crop)
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
            assert a["map"].shape == (crop, crop)
            np.testing.assert_allclose(a["map"], b["map"], rtol=tol, atol=tol)
            assert a["score"] == pytest.approx(b["score"], rel=tol / 10)
            assert a["verdict"] == b["verdict"] != "unknown"
        assert os.path.isfile(out / "predictions.csv")


def test_threshold_does_not_depend_on_the_test_set(demo_root, tmp_path):
    """The threshold must be learned from normal training images only: swapping the whole test
    set (labels, masks and images) must not change it."""
    a = _fit(demo_root, str(tmp_path / "a"), 256, "brick")
    other = tmp_path / "data"
    shutil.copytree(os.path.join(demo_root, "brick"), other / "brick")
    shutil.rmtree(other / "brick" / "test")
    shutil.rmtree(other / "brick" / "ground_truth")
    shutil.copytree(os.path.join(demo_root, "gravel", "test"), other / "brick" / "test")
    b = _fit(str(other), str(tmp_path / "b"), 256, "brick")
    ta, tb = load_model(a)[0]["threshold"], load_model(b)[0]["threshold"]
    assert ta["image"] == tb["image"] and ta["n_holdout"] == 2
    s = np.array(ta["holdout_scores"])
    assert ta["image"] == pytest.approx(max(s.max(), s.mean() + 3 * s.std(ddof=1)))


def test_threshold_override_changes_the_verdict(demo_root, tmp_path):
    path = _fit(demo_root, str(tmp_path / "m"), 256, "brick")
    img = os.path.join(demo_root, "brick", "test", "good", "000.png")
    low = predict.main(predict.get_args([img, "--model_path", path, "--threshold", "0",
                                         "--save_pic=False"]))
    high = predict.main(predict.get_args([img, "--model_path", path, "--threshold", "1e9",
                                          "--save_pic=False"]))
    assert low[0]["verdict"] == "anomalous" and high[0]["verdict"] == "normal"
