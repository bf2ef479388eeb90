"""Users' own data as it ships: masks beside their images, defect folders that all share one
name, images counted once (content digests), and what the tools say about masks, thresholds,
weights and pictures. Oracles: the same bytes laid out cleanly, a fit on the unique images."""
import os
import shutil

import numpy as np
import pytest
from PIL import Image

import eval as eval_script
import train
from conftest import run_script
from modelfile import load_model
from utils import model_path

FIT = ["--no-pretrained", "--k", "8", "--input_size", "64", "--batch_size", "8"]


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """The same JPEG bytes in two trees: ``clean`` (images per folder, masks in a separate
    --mask_dir tree) and ``shipped`` as a real defect data set ships it: normal tiles in
    Free/Imgs/*.jpg with an all-black <stem>.png beside every one, each defect type in
    <Type>/Imgs/ with its <stem>.png masks beside the images (every defect folder named Imgs)."""
    from datasets.synthetic import generate
    root = tmp_path_factory.mktemp("own")
    generate(str(root / "gen"), ("brick",), n_train=12, n_good=4, n_defect=9, size=64, seed=1,
             layout="folder")
    gen = root / "gen" / "brick"
    kinds = sorted(d for d in os.listdir(gen) if d not in ("good", "test_good", "masks"))
    clean, ship = root / "clean", root / "shipped"

    def jpeg(src, *dsts):
        for dst in dsts:
            os.makedirs(os.path.dirname(dst), exist_ok=True)
        Image.open(src).convert("RGB").save(dsts[0], format="JPEG", quality=95)
        for dst in dsts[1:]:
            shutil.copy(dsts[0], dst)
    for f in sorted(os.listdir(gen / "good")):
        stem = os.path.splitext(f)[0]
        jpeg(gen / "good" / f, clean / "good" / f"{stem}.jpg", ship / "Free" / "Imgs" /
             f"{stem}.jpg")
        Image.fromarray(np.zeros((64, 64), np.uint8)).save(ship / "Free" / "Imgs" / f"{stem}.png")
    for f in sorted(os.listdir(gen / "test_good")):
        stem = os.path.splitext(f)[0]
        jpeg(gen / "test_good" / f, clean / "test_good" / f"{stem}.jpg",
             ship / "FreeTest" / "Imgs" / f"{stem}.jpg")
        Image.fromarray(np.zeros((64, 64), np.uint8)).save(ship / "FreeTest" / "Imgs" /
                                                           f"{stem}.png")
    for kind in kinds:
        t = kind.capitalize()
        for f in sorted(os.listdir(gen / kind)):
            stem = os.path.splitext(f)[0]
            jpeg(gen / kind / f, clean / kind / f"{stem}.jpg", ship / t / "Imgs" / f"{stem}.jpg")
            mask = gen / "masks" / kind / f"{stem}_mask.png"
            os.makedirs(clean / "masks" / kind, exist_ok=True)
            shutil.copy(mask, clean / "masks" / kind / f"{stem}_mask.png")
            shutil.copy(mask, ship / t / "Imgs" / f"{stem}.png")
    return {"clean": clean, "shipped": ship, "kinds": kinds}


def _clean_flags(s):
    c = s["clean"]
    return ["--normal_dir", str(c / "good"), "--normal_test_dir", str(c / "test_good"),
            "--abnormal_dir", *[str(c / k) for k in s["kinds"]], "--mask_dir", str(c / "masks"),
            "--category", "part"]


def _shipped_flags(s):
    d = s["shipped"]
    return ["--normal_dir", str(d / "Free" / "Imgs"), "--normal_test_dir",
            str(d / "FreeTest" / "Imgs"), "--abnormal_dir",
            *[f"{k.capitalize()}={d / k.capitalize() / 'Imgs'}" for k in s["kinds"]],
            "--category", "part"]


def test_a_data_set_as_shipped_equals_the_same_bytes_laid_out_cleanly(shipped, tmp_path,
                                                                      caplog):
    """Masks beside images are masks (never images, never normal images), five folders named
    Imgs are five types by TYPE=PATH: n_test, image AUROC, pixel AUROC and AU-PRO equal the
    clean layout's."""
    rows = {}
    for name, flags in (("clean", _clean_flags(shipped)), ("shipped", _shipped_flags(shipped))):
        with caplog.at_level("INFO"):
            rows[name] = train.main(train.get_args([*flags, *FIT, "--save_path",
                                                    str(tmp_path / name), "--eval",
                                                    "--eval_PRO"]))[0]
    a, b = rows["clean"], rows["shipped"]
    assert (a["n_train"], a["n_test"], a["n_defect"]) == (12, 13, 9)
    assert (b["n_train"], b["n_test"], b["n_defect"], b["n_pixel_images"]) == \
        (a["n_train"], a["n_test"], a["n_defect"], a["n_pixel_images"])
    for key in ("image_auroc", "pixel_auroc", "au_pro"):
        assert b[key] == pytest.approx(a[key], abs=1e-6), key
    text = caplog.text
    assert "12 masks beside the normal images" in text and "masks found beside the images" in text


def test_folders_of_one_name_need_a_type_and_parents_say_where_the_images_are(shipped,
                                                                              tmp_path):
    d = shipped["shipped"]
    kinds = [d / k.capitalize() / "Imgs" for k in shipped["kinds"]]
    r = run_script("train.py", "--normal_dir", str(d / "Free" / "Imgs"), "--abnormal_dir",
                   *map(str, kinds), "--category", "part", *FIT, "--save_path",
                   str(tmp_path / "o"))
    assert r.returncode == 2 and "are both of type 'Imgs'" in r.stderr and \
        "--abnormal_dir TYPE1=PATH1" in r.stderr and "Traceback" not in r.stderr
    r = run_script("train.py", "--normal_dir", str(d / "Free"), "--category", "part", *FIT,
                   "--save_path", str(tmp_path / "o"))
    assert r.returncode == 2 and "holds no images, but its sub-folder(s) Imgs do" in r.stderr \
        and f"give --normal_dir {d / 'Free' / 'Imgs'}" in r.stderr
    assert not (tmp_path / "o").exists()


def test_mask_pairs_rules_and_ambiguities(tmp_path):
    """<stem>_mask.* and a grey <stem>.png beside a photo are masks, a colour PNG beside a
    photo an image of its own; two masks for one image are an error naming the files."""
    from orthoad_runtime.mask_pairs import split_masks
    from utils import UserError
    rgb = np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    grey = np.zeros((8, 8), np.uint8)
    for name, arr in (("a.jpg", rgb), ("a.png", grey), ("b.png", rgb), ("b_mask.png", grey),
                      ("c.bmp", rgb), ("d.png", rgb)):
        Image.fromarray(arr).save(tmp_path / name)
    files = sorted(str(p) for p in tmp_path.iterdir())
    images, masks = split_masks(files)
    name = os.path.basename
    assert sorted(map(name, images)) == ["a.jpg", "b.png", "c.bmp", "d.png"]
    assert {name(k): name(v) for k, v in masks.items()} == {"a.jpg": "a.png",
                                                           "b.png": "b_mask.png"}
    Image.fromarray(rgb).save(tmp_path / "c.png")                   # colour PNG beside c.bmp
    assert "c.png" in map(name, split_masks(sorted(str(p) for p in tmp_path.iterdir()))[0])
    os.remove(tmp_path / "c.png")
    Image.fromarray(grey).save(tmp_path / "a_mask.png")            # second mask of a.jpg
    with pytest.raises(UserError, match="'a.jpg' .* has two masks beside it"):
        split_masks(sorted(str(p) for p in tmp_path.iterdir()))


def _digest_fit(demo_root, tmp_path, *extra):
    data = tmp_path / "data"
    if not data.exists():
        shutil.copytree(os.path.join(demo_root, "gravel"), data / "gravel")
    train.main(train.get_args(["--data_path", str(data), "--category", "gravel", "--k", "8",
                               "--no-pretrained", "--input_size", "64", "--save_path",
                               str(tmp_path / "m"), "--save_sums", *extra]))
    return data, model_path(str(tmp_path / "m"), "ortho", "resnet18", 8, "gravel")


def test_an_image_reaches_the_statistics_once(demo_root, tmp_path, caplog):
    """--update with the training folder again leaves the model file byte for byte; with new
    images plus copies of old ones, only the new ones count (against a fit on the unique
    images); the model's own test images are refused."""
    data, path = _digest_fit(demo_root, tmp_path)
    before = open(path, "rb").read()
    with caplog.at_level("INFO"):
        train.main(train.get_args(["--data_path", str(data), "--category", "gravel", "--k", "8",
                                   "--save_path", str(tmp_path / "m"), "--update"]))
    assert open(path, "rb").read() == before
    assert "16 of the 16 images are already in the model's statistics" in caplog.text
    # two new images (flipped), one of them twice, and every old image under a new name
    new = tmp_path / "new" / "gravel" / "train" / "good"
    new.mkdir(parents=True)
    old = sorted((data / "gravel" / "train" / "good").iterdir())
    for i, f in enumerate(old):
        shutil.copy(f, new / f"renamed_{i}.png")
    for i in range(2):
        Image.open(old[i]).transpose(Image.FLIP_LEFT_RIGHT).save(new / f"flip_{i}.png")
    shutil.copy(new / "flip_0.png", new / "flip_0_again.png")
    train.main(train.get_args(["--data_path", str(tmp_path / "new"), "--category", "gravel",
                               "--k", "8", "--save_path", str(tmp_path / "m"), "--update"]))
    meta, arrays = load_model(path)
    assert meta["n_train"] == 18 and meta["sums"]["n_images"] == 18
    both = tmp_path / "both" / "gravel" / "train" / "good"
    shutil.copytree(data / "gravel" / "train" / "good", both)
    for i in range(2):
        shutil.copy(new / f"flip_{i}.png", both / f"flip_{i}.png")
    whole = model_path(str(tmp_path / "w"), "ortho", "resnet18", 8, "gravel")
    train.main(train.get_args(["--data_path", str(tmp_path / "both"), "--category", "gravel",
                               "--k", "8", "--no-pretrained", "--input_size", "64",
                               "--save_path", str(tmp_path / "w")]))
    ref = load_model(whole)[1]
    np.testing.assert_allclose(arrays["mean"], ref["mean"], atol=1e-5 * np.abs(ref["mean"]).max())
    # the model's own test images, under another name: refused, the model untouched
    before = open(path, "rb").read()
    leak = tmp_path / "leak" / "gravel" / "train" / "good"
    leak.mkdir(parents=True)
    shutil.copy(data / "gravel" / "test" / "good" / "000.png", leak / "fresh.png")
    r = run_script("train.py", "--data_path", str(tmp_path / "leak"), "--category", "gravel",
                   "--k", "8", "--save_path", str(tmp_path / "m"), "--update")
    assert r.returncode == 2 and "is one of the model's test images (by content)" in r.stderr
    assert open(path, "rb").read() == before


def test_a_fit_refuses_a_test_image_that_is_a_training_image(demo_root, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(os.path.join(demo_root, "gravel"), data / "gravel")
    shutil.copy(data / "gravel" / "train" / "good" / "003.png",
                data / "gravel" / "test" / "good" / "copy.png")
    r = run_script("train.py", "--data_path", str(data), "--category", "gravel", *FIT,
                   "--save_path", str(tmp_path / "o"))
    assert r.returncode == 2 and "copy.png' has the same content as training image" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "o").exists()


def test_grey_masks_and_unresolvable_targets_are_said_once(fitted, tmp_path, caplog):
    from datasets.loading import read_mask
    from datasets.samples import MASK_GT127
    a = np.zeros((8, 8), np.uint8)
    a[2:5, 2:5] = 200
    a[5, 5] = 90
    for i in range(2):
        Image.fromarray(a).save(tmp_path / f"m{i}.png")
    with caplog.at_level("WARNING"):
        for i in range(2):
            got = read_mask(str(tmp_path / f"m{i}.png"), MASK_GT127)
    assert got.sum() == 9
    assert caplog.text.count("hold grey values") == 1 and "above 127" in caplog.text
    # fpr=0.05 on 4 normal calibration images (copies of test images would be refused)
    cal = tmp_path / "cal" / "good"
    cal.mkdir(parents=True)
    for f in sorted(os.listdir(os.path.join(fitted["data"], "brick", "train", "good")))[:4]:
        shutil.copy(os.path.join(fitted["data"], "brick", "train", "good", f), cal / f)
    caplog.clear()
    copy = tmp_path / "brick.safetensors"                      # calibrated in place
    shutil.copy(model_path(fitted["save"], "ortho", "resnet18", 20, "brick"), copy)
    with caplog.at_level("WARNING"):
        import calibrate
        calibrate.main(calibrate.get_args([
            "--model_path", str(copy), "--calibration_dir", str(tmp_path / "cal"),
            "--threshold_target", "fpr=0.05"]))
    assert "cannot resolve the target" in caplog.text and "at least 20 normal" in caplog.text


def test_one_weights_rule_in_every_script(fitted, tmp_path):
    """eval.py takes --no-pretrained (the file agrees), refuses --pretrained (the file says
    random); infer.py says it does not need weights instead of 'unrecognized'."""
    base = ["--data_path", fitted["data"], "--category", "brick", "--k", "20", "--save_path",
            fitted["save"]]
    row = eval_script.main(eval_script.get_args(base + ["--no-pretrained"]))[0]
    assert row["image_auroc"] is not None
    r = run_script("eval.py", *base, "--pretrained")
    assert r.returncode == 2 and "--pretrained contradicts the model file" in r.stderr
    r = run_script("infer.py", "--model_file", "x.onnx", "--input_file", "y.png", "--weights",
                   "w.pdparams")
    assert r.returncode == 2 and "--weights is not needed by infer.py" in r.stderr


def test_pictures_keep_the_image_aspect_ratio(demo_root, tmp_path):
    """A model with a square input on 2:1 images: predict.py's figure draws the panels 2:1, as
    the images are, not squashed to the input's square."""
    import predict
    src = os.path.join(demo_root, "brick", "train", "good")
    wide = tmp_path / "wide" / "brick"
    for split in ("train/good", "test/good"):
        os.makedirs(wide / split)
    for i, f in enumerate(sorted(os.listdir(src))[:10]):
        im = Image.open(os.path.join(src, f)).resize((128, 64))
        im.save(wide / ("test/good" if i >= 8 else "train/good") / f)
    train.main(train.get_args(["--data_path", str(tmp_path / "wide"), "--category", "brick",
                               "--k", "8", "--no-pretrained", "--input_size", "64",
                               "--save_path", str(tmp_path / "m")]))
    out = predict.main(predict.get_args([
        str(wide / "test" / "good"), "--model_path",
        model_path(str(tmp_path / "m"), "ortho", "resnet18", 8, "brick"), "--output",
        str(tmp_path / "p"), "--save_outputs=False"]))
    fig = Image.open(out[0]["picture"])
    panel_w = (fig.width - 4 * 8) / 3                 # three panels, four 8 px gaps
    assert panel_w / 256 == pytest.approx(2.0, abs=0.02)


def test_a_verdict_that_disagrees_with_its_regions_says_why():
    from orthoad_runtime.predictions import Prediction
    p = Prediction(None, 3.0, "normal", 4.0, 2.5, [{"area": 5}], np.zeros((4, 4)),
                   np.zeros((4, 4)), np.zeros((4, 4), bool))
    line = p.console_line()
    assert "normal" in line and "score <= image threshold 4" in line and \
        "pixels > pixel threshold 2.5" in line
