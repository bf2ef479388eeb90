"""Input geometry: the MVTec protocol for square images, whole-image inputs for the rest, no
silent loss of pixels, maps back at every original size, statistics cells at high resolution."""
import os

import numpy as np
import pytest
from PIL import Image

import eval as eval_script
import train
from datasets.synthetic import generate
from orthoad_runtime.transforms import IMAGENET_MEAN, IMAGENET_STD
from modelfile import load_model
from pipeline.geometry import choose, choose_cell, parse_input_size
from utils import UserError, model_path


@pytest.fixture(scope="module")
def rect_root(tmp_path_factory):
    """brick at 64 x 128 (landscape, aspect 2): 10 train, 3 good + 6 defective test images."""
    root = str(tmp_path_factory.mktemp("rect"))
    generate(root, ("brick",), n_train=10, n_good=3, n_defect=6, size=128, seed=0, height=64)
    return root


def _train_files(root, category="brick"):
    d = os.path.join(root, category, "train", "good")
    return sorted(os.path.join(d, f) for f in os.listdir(d))


def _legacy_image(path, resize=256, crop=256):
    """The pre-geometry pipeline written out: shorter side to 256, centre 256 crop, ImageNet."""
    img = Image.open(path).convert("RGB")
    w, h = img.size
    nh, nw = (resize, max(resize, round(w * resize / h))) if h <= w else \
        (max(resize, round(h * resize / w)), resize)
    img = img.resize((nw, nh), Image.BILINEAR)
    top, left = (nh - crop) // 2, (nw - crop) // 2
    x = np.asarray(img.crop((left, top, left + crop, top + crop)), np.float32) / 255.0
    return ((x - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
            ).transpose(2, 0, 1)


def test_auto_on_square_images_is_the_mvtec_protocol(demo_root):
    files = _train_files(demo_root)
    pre, info = choose(files)
    assert pre.config()["mode"] == "crop" and (pre.resize, pre.input_hw) == (256, (256, 256))
    assert info["unscored_fraction"] == 0 and "square" in info["rule"]
    from orthoad_runtime.transforms import load_rgb
    for f in files[:3]:
        np.testing.assert_array_equal(pre.image(load_rgb(f)), _legacy_image(f))


def test_auto_on_mixed_aspect_ratios_resizes_whole_images(tmp_path):
    rng = np.random.default_rng(0)
    files = []
    for i, (h, w) in enumerate([(200, 400), (300, 450), (240, 576), (400, 300), (500, 500)]):
        files.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(files[-1])
    pre, info = choose(files)
    h, w = pre.input_hw
    aspect = np.exp(np.mean(np.log([2.0, 1.5, 2.4, 0.75, 1.0])))
    assert pre.config()["mode"] == "whole" and h % 16 == 0 and w % 16 == 0
    assert abs(h * w / 65536 - 1) < 0.1 and abs((w / h) / aspect - 1) < 0.1
    assert info["unscored_fraction"] == 0 and info["aspect_range"] == [0.75, 2.4]
    x = pre.image(np.asarray(Image.open(files[0]).convert("RGB")))
    assert x.shape == (3, h, w)
    pre2, _ = choose(files, parse_input_size(["96", "160"]))
    assert pre2.input_hw == (96, 160) and pre2.resize is None
    with pytest.raises(UserError, match="give one or the other"):
        choose(files, (96, 160), crop_size=224)


@pytest.mark.parametrize("words,message", [
    (["8"], "too small"), (["100"], "not a multiple of the stride 16"),
    (["12x34"], "malformed"), (["1", "2", "3"], "malformed")])
def test_bad_input_size_names_the_valid_values(words, message):
    with pytest.raises(UserError, match=message) as err:
        parse_input_size(words)
    assert "auto, S or H W" in str(err.value)


def test_cells_are_one_at_256_and_grow_at_high_resolution():
    assert choose_cell((64, 64), 300) == 1                   # wide_resnet50_2 k=300: 4.4 GB
    assert choose_cell((512, 512), 100) == 4                 # 2048 x 2048: 1.97 GB, not 31 GB
    assert choose_cell((256, 1024), 100) == 4                # 1024 x 4096
    assert choose_cell((54, 54), 100) == 1
    with pytest.raises(UserError, match="does not divide"):
        choose_cell((54, 54), 100, 4)


def test_centre_crop_of_rectangles_is_reported_not_hidden(rect_root, tmp_path, caplog):
    """Classic geometry on 64 x 128 images: half of each image is never scored. The fit says so,
    the original-size maps mark those pixels NaN, the pixel metrics leave them out and report the
    share of defect pixels there."""
    import tifffile
    from sklearn.metrics import roc_auc_score

    from datasets import mvtec
    from orthoad_runtime.transforms import load_mask
    save = str(tmp_path / "m")
    with caplog.at_level("WARNING"):
        train.main(train.get_args(["--data_path", rect_root, "--category", "brick", "--k", "6",
                                   "--no-pretrained", "--resize", "64", "--crop_size", "64",
                                   "--save_path", save]))
    assert any("leaves 50.0% of the training images' pixels unscored" in r.message
               for r in caplog.records)
    meta = load_model(model_path(save, "ortho", "resnet18", 6, "brick"))[0]
    assert meta["geometry"]["unscored_fraction"] == pytest.approx(0.5)
    row = eval_script.main(eval_script.get_args([
        "--data_path", rect_root, "--category", "brick", "--k", "6", "--save_path", save,
        "--eval_size", "original", "--save_maps", str(tmp_path / "maps"), "--eval_PRO"]))[0]
    maps, masks, outside, defect = [], [], 0, 0
    for s in mvtec.read(rect_root, "brick").test:
        stem = os.path.splitext(os.path.basename(s.path))[0]
        m = tifffile.imread(tmp_path / "maps" / "brick" / "test" / s.defect / f"{stem}.tiff")
        assert m.shape == (64, 128)
        assert np.isnan(m[:, :32]).all() and np.isnan(m[:, 96:]).all()
        assert np.isfinite(m[:, 32:96]).all()
        gt = load_mask(s.masks[0]) > 127 if s.has_mask else np.zeros((64, 128), bool)
        outside += gt[:, :32].sum() + gt[:, 96:].sum()
        defect += gt.sum()
        maps.append(m)
        masks.append(gt)
    assert outside > 0 and row["unscored_defect_frac"] == pytest.approx(outside / defect)
    maps, masks = np.stack(maps), np.stack(masks)
    scored = np.isfinite(maps)
    assert row["pixel_auroc"] == pytest.approx(roc_auc_score(masks[scored], maps[scored]),
                                               abs=1e-9)


def test_whole_geometry_scores_every_pixel_at_every_original_size(rect_root, tmp_path):
    """--input_size H W on rectangles: each original-size map is the input-size map resized
    bilinearly onto its image (no NaN), for test images of another size too."""
    import shutil

    import tifffile

    import predict
    data = tmp_path / "data"
    shutil.copytree(rect_root, data)
    odd = data / "brick" / "test" / "good" / "099.png"          # a test image of another size
    Image.open(data / "brick" / "test" / "good" / "000.png").resize((150, 70)).save(odd)
    save = str(tmp_path / "m")
    train.main(train.get_args(["--data_path", str(data), "--category", "brick", "--k", "6",
                               "--no-pretrained", "--input_size", "64", "128", "--cell", "2",
                               "--save_path", save]))
    path = model_path(save, "ortho", "resnet18", 6, "brick")
    meta = load_model(path)[0]
    assert meta["input_size"] == [64, 128] and meta["cell"] == 2 and meta["n_cells"] == 128
    assert meta["geometry"]["mode"] == "whole" and meta["geometry"]["unscored_fraction"] == 0
    row = eval_script.main(eval_script.get_args([
        "--data_path", str(data), "--category", "brick", "--k", "6", "--save_path", save,
        "--eval_size", "original", "--save_maps", str(tmp_path / "maps")]))[0]
    assert row["unscored_defect_frac"] == 0
    for name in ("000", "099"):
        src = data / "brick" / "test" / "good" / f"{name}.png"
        full = tifffile.imread(tmp_path / "maps" / "brick" / "test" / "good" / f"{name}.tiff")
        amap = predict.main(predict.get_args([str(src), "--model_path", path,
                                              "--save_pic=False"]))[0]["map"]
        w, h = Image.open(src).size
        ref = np.asarray(Image.fromarray(amap).resize((w, h), Image.BILINEAR))
        assert full.shape == (h, w) and np.isfinite(full).all()
        np.testing.assert_allclose(full, ref, rtol=1e-5, atol=1e-5)


def test_far_off_aspect_ratio_is_scored_with_one_warning(demo_root, tmp_path):
    from conftest import run_script
    save = str(tmp_path / "m")
    r = run_script("train.py", "--data_path", demo_root, "--category", "gravel", "--k", "4",
                   "--no-pretrained", "--resize", "64", "--crop_size", "64", "--save_path", save)
    assert r.returncode == 0, r.stderr[-2000:]
    wide = tmp_path / "wide.png"
    Image.open(os.path.join(demo_root, "gravel", "test", "good", "000.png")).resize(
        (300, 60)).save(wide)
    r = run_script("predict.py", str(wide), "--model_path",
                   model_path(save, "ortho", "resnet18", 4, "gravel"), "--save_pic=False")
    assert r.returncode == 0, r.stderr[-2000:]
    warnings = [line for line in r.stderr.splitlines() if "over 2x off" in line]
    assert len(warnings) == 1 and "wide.png" in warnings[0], r.stderr[-2000:]
    assert "score" in r.stdout
