"""Data layouts: every reader against the generator's record of what it wrote, the detection of
the layout, the same images giving the same metrics in every layout, and bad input."""
import csv
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

import eval as eval_script
import train
from conftest import run_script
from datasets.layout_writers import WRITERS, folder_flags, read_manifest
from datasets.layouts import DataOptions, Dataset, detect
from datasets.synthetic import generate

LAYOUTS = sorted(WRITERS)
FIT = ["--no-pretrained", "--k", "8", "--input_size", "64", "--batch_size", "8"]


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    """The same demo images (brick, gravel: 8 train, 3 good + 6 defective test, 64 px) written in
    every layout."""
    root = tmp_path_factory.mktemp("layouts")
    out = {}
    for layout in LAYOUTS:
        generate(str(root / layout), ("brick", "gravel"), n_train=8, n_good=3, n_defect=6,
                 size=64, seed=0, layout=layout)
        out[layout] = str(root / layout)
    return out


def _dataset(layout, path, category="brick"):
    if layout == "folder":
        args = folder_flags(path, category)
        opts = DataOptions(data_format="folder", normal_dir=args[args.index("--normal_dir") + 1],
                           normal_test_dir=args[args.index("--normal_test_dir") + 1],
                           mask_dir=args[args.index("--mask_dir") + 1],
                           abnormal_dir=args[args.index("--abnormal_dir") + 1:
                                             args.index("--mask_dir")])
        return Dataset(opts)
    return Dataset(DataOptions(data_path=path))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_reader_lists_exactly_what_the_generator_wrote(layout, trees):
    """Every split, label, defect type and mask of the manifest, nothing more (auto-detected)."""
    dataset = _dataset(layout, trees[layout])
    assert dataset.layout == layout
    files = read_manifest(trees[layout])["files"]
    categories = ["brick"] if layout == "folder" else dataset.select("all")
    assert categories == (["brick"] if layout == "folder" else ["brick", "gravel"])
    for cat in categories:
        data = dataset.read(dataset.select(cat)[0])
        mine = [f for f in files if f["category"] == cat]
        assert sorted(data.train) == sorted(f["path"] for f in mine if f["split"] == "train")
        assert sorted(data.validation) == sorted(f["path"] for f in mine
                                                 if f["split"] == "validation")
        got = sorted((s.path, s.label, s.defect, tuple(s.masks)) for s in data.test)
        want = sorted((f["path"], f["label"], f["defect"], tuple(f["masks"])) for f in mine
                      if f["split"] == "test")
        assert got == want
        unlabelled = {s: sorted(f["path"] for f in mine if f["split"] == s)
                      for s in ("test_private", "test_private_mixed")}
        assert {s: sorted(p) for s, p in data.unlabelled.items()} == \
            {s: p for s, p in unlabelled.items() if p}


def test_every_layout_is_recognised_with_its_reason(trees):
    for layout in LAYOUTS:
        if layout == "folder":
            continue
        name, why = detect(DataOptions(data_path=trees[layout]))
        assert name == layout and why


def test_a_tree_that_fits_two_layouts_names_both(trees, tmp_path):
    mixed = tmp_path / "mixed"
    shutil.copytree(trees["visa"], mixed)
    shutil.copytree(os.path.join(trees["mvtec"], "brick"), mixed / "extra")
    with pytest.raises(Exception, match="fits several layouts.*--data_format mvtec or visa"):
        detect(DataOptions(data_path=str(mixed)))


def test_a_category_folder_given_as_root_is_explained(trees):
    with pytest.raises(Exception, match="is itself a category .*--category brick"):
        detect(DataOptions(data_path=os.path.join(trees["mvtec"], "brick")))


def _metrics(layout, trees, tmp_path, *extra):
    data_args = folder_flags(trees[layout], "brick") if layout == "folder" else \
        ["--data_path", trees[layout], "--category", "brick"]
    save = str(tmp_path / f"{layout}{len(extra)}")
    row = train.main(train.get_args([*data_args, *FIT, "--save_path", save, "--eval",
                                     "--eval_PRO", *extra]))[0]
    return row, save


@pytest.mark.parametrize("layout", [l for l in LAYOUTS if l != "mvtec"])
def test_the_same_images_give_the_same_metrics_in_every_layout(layout, trees, tmp_path):
    """Image AUROC, pixel AUROC and AU-PRO equal the MVTec layout's to 1e-9. MVTec AD 2 and LOCO
    fit every training image (their threshold comes from validation/good), so they are compared
    with the MVTec fit that holds none out (--holdout 0): the same statistics."""
    extra = ["--holdout", "0"] if layout in ("mvtec_ad2", "mvtec_loco") else []
    ref, _ = _metrics("mvtec", trees, tmp_path, *extra)
    row, save = _metrics(layout, trees, tmp_path, *extra)
    for key in ("image_auroc", "pixel_auroc", "au_pro", "au_pro_05"):
        assert row[key] == pytest.approx(ref[key], abs=1e-9), key
    if layout in ("mvtec_ad2", "mvtec_loco"):      # threshold from the 5 validation images
        meta = json.loads(_safetensors_meta(os.path.join(save, "ortho_resnet18_k8",
                                                         "brick.safetensors")))
        assert meta["threshold"]["source"] == "validation"
        assert meta["threshold"]["n_holdout"] == 5 and meta["n_train"] == 8


def _safetensors_meta(path):
    from modelfile import read_header
    return read_header(path)[0]["meta"]


def test_mvtec_ad2_threshold_follows_the_rule_on_validation_images_only(trees, tmp_path):
    """The threshold is max(max(s), mean + 3 std) of the validation images' scores, scored by the
    model fitted on all training images (an oracle: predict.py on the same images)."""
    save = str(tmp_path / "ad2")
    train.main(train.get_args(["--data_path", trees["mvtec_ad2"], "--category", "brick", *FIT,
                               "--save_path", save]))
    model = os.path.join(save, "ortho_resnet18_k8", "brick.safetensors")
    import predict
    rows = predict.main(predict.get_args([
        os.path.join(trees["mvtec_ad2"], "brick", "validation", "good"), "--model_path", model,
        "--save_pic", "false", "--save_outputs", "false", "--engine", "dygraph",
        "--output", str(tmp_path / "p")]))
    s = np.array([r["score"] for r in rows])
    meta = json.loads(_safetensors_meta(model))
    assert meta["threshold"]["image"] == pytest.approx(max(s.max(), s.mean() + 3 * s.std(ddof=1)),
                                                       rel=1e-4)


def test_mvtec_loco_metrics_follow_the_official_definition_on_the_saved_maps(trees, tmp_path):
    """Input 32 px on 64 px images, so that the maps go through the original-size path: every
    MVTec LOCO column of results.csv against the definition written the long way
    (test_official_parity) on the .tiff maps eval.py wrote, read back with the ground truth
    and defects_config.json as MVTec's evaluation reads them."""
    import tifffile
    from sklearn.metrics import roc_auc_score

    from test_official_parity import read_loco_ground_truth, spro_long_way
    _, save = _metrics("mvtec_loco", trees, tmp_path, "--holdout", "0", "--input_size", "32")
    maps_dir = tmp_path / "maps"
    row = eval_script.main(eval_script.get_args([
        "--data_path", trees["mvtec_loco"], "--category", "brick", "--k", "8", "--save_path",
        save, "--eval_PRO", "--save_maps", str(maps_dir)]))[0]
    gt = read_loco_ground_truth(os.path.join(trees["mvtec_loco"], "brick"))
    maps = {key: tifffile.imread(maps_dir / "brick" / "test" / key[0] / f"{key[1]}.tiff")
            for key in gt}
    assert {m.shape for m in maps.values()} == {(64, 64)}
    assert any(len(d) > 1 for d in gt.values())              # several files in one image
    means = {}
    for sub in ("logical", "structural"):
        keys = [k for k in gt if k[0] in ("good", f"{sub}_anomalies")]
        for limit, name in ((0.01, "01"), (0.05, "05"), (0.1, "10"), (0.3, "30"), (1.0, "100")):
            want = spro_long_way([maps[k] for k in keys], [gt[k] for k in keys], limit)
            assert row[f"au_spro_{name}_{sub}"] == pytest.approx(want, abs=1e-9), (sub, name)
            means.setdefault(name, []).append(want)
        labels = [k[0] != "good" for k in keys]
        assert row[f"image_auroc_{sub}"] == pytest.approx(
            roc_auc_score(labels, [maps[k].max() for k in keys]), abs=1e-9)
    for name, values in means.items():
        assert row[f"au_spro_{name}_mean"] == pytest.approx(np.mean(values), abs=1e-9)


def test_visa_jpeg_tree_reads_and_masks_are_nonzero_not_255(tmp_path):
    """VisA as shipped: .JPG images; masks with values 1-3, which a >127 rule would miss."""
    from datasets.loading import load_test_item
    from orthoad_runtime.transforms import Preprocess
    generate(str(tmp_path / "v"), ("brick",), n_train=4, n_good=1, n_defect=3, size=64,
             layout="visa", image_format="jpg")
    ds = Dataset(DataOptions(data_path=str(tmp_path / "v")))
    data = ds.read("brick")
    assert all(p.endswith(".JPG") for p in data.train)
    defect = [s for s in data.test if s.label == 1]
    pre = Preprocess(64, 64)
    for s in defect:
        raw = np.asarray(Image.open(s.masks[0]))
        assert 0 < raw.max() <= 3
        item = load_test_item(s, pre)
        assert (item.mask_orig > 0).sum() == (raw > 0).sum() > 0


def _visa_copy(trees, tmp_path):
    dst = tmp_path / "visa"
    shutil.copytree(trees["visa"], dst)
    path = dst / "split_csv" / "1cls.csv"
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    return dst, path, rows


def _write(path, rows):
    with open(path, "w", newline="") as fh:
        csv.writer(fh, lineterminator="\n").writerows(rows)


@pytest.mark.parametrize("change,expected", [
    (lambda r: r[1].__setitem__(3, "brick/Data/Images/Normal/nope.png"), "line 2: image"),
    (lambda r: r[1].__setitem__(2, "weird"), "line 2: label 'weird' is neither normal"),
    (lambda r: r.append(list(r[1][:1]) + ["test"] + r[1][2:]), "in both the train and the test"),
    (lambda r: r.append(list(r[1])), "twice in the train"),
    (lambda r: r[1].__setitem__(3, "../../etc/passwd"), "leads outside the data root"),
    (lambda r: r[1].__setitem__(2, "anomaly"), "anomalous image in the train split"),
    (lambda r: r[-1].__setitem__(4, "brick/Data/Masks/Anomaly/gone.png"), "mask"),
    (lambda r: r[0].__setitem__(2, "labels"), "lacks the column(s) label"),
])
def test_visa_csv_errors_name_the_row_and_the_fix(change, expected, trees, tmp_path):
    dst, path, rows = _visa_copy(trees, tmp_path)
    change(rows)
    _write(path, rows)
    r = run_script("train.py", "--data_path", str(dst), "--save_path", str(tmp_path / "o"), *FIT)
    err = [line for line in r.stderr.splitlines() if "error:" in line]
    assert r.returncode == 2 and len(err) == 1 and expected in err[0], r.stderr[-1500:]
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()                  # nothing written before validation


def test_loco_errors_for_a_bad_config_and_an_unlisted_defect_value(trees, tmp_path):
    dst = tmp_path / "loco"
    shutil.copytree(trees["mvtec_loco"], dst)
    cfg = dst / "brick" / "defects_config.json"
    entries = json.loads(cfg.read_text())
    cfg.write_text(json.dumps([dict(entries[0], saturation_threshold=-1)] + entries[1:]))
    r = run_script("train.py", "--data_path", str(dst), "--save_path", str(tmp_path / "o"), *FIT)
    assert r.returncode == 2 and "entry 0 has relative_saturation true, so its " \
        "saturation_threshold must be a decimal number in (0, 1]" in r.stderr
    cfg.write_text(json.dumps(entries[1:]))              # value 255 (scratch) no longer listed
    r = run_script("train.py", "--data_path", str(dst), "--category", "brick", "--save_path",
                   str(tmp_path / "o"), *FIT, "--eval", "--eval_PRO")
    assert r.returncode == 2 and "pixel value 255, which defects_config.json does not list" \
        in r.stderr and "Traceback" not in r.stderr


def test_folder_masks_flat_or_by_type_with_or_without_suffix(trees, tmp_path):
    """Flat masks named <stem>.png match; the same stem in two defect folders is an error."""
    src = os.path.join(trees["folder"], "brick")
    flat = tmp_path / "flat"
    flat.mkdir()
    for kind in ("blob", "scratch"):
        for f in os.listdir(os.path.join(src, "masks", kind)):
            shutil.copy(os.path.join(src, "masks", kind, f), flat / f"{kind}_{f}")
        os.makedirs(tmp_path / kind)
        for f in os.listdir(os.path.join(src, kind)):
            shutil.copy(os.path.join(src, kind, f), tmp_path / kind / f"{kind}_{f}")
    for f in os.listdir(flat):                             # without the _mask suffix
        os.rename(flat / f, flat / f.replace("_mask", ""))
    opts = DataOptions(data_format="folder", normal_dir=os.path.join(src, "good"),
                       abnormal_dir=[str(tmp_path / "blob"), str(tmp_path / "scratch")],
                       mask_dir=str(flat), normal_test_dir=os.path.join(src, "test_good"))
    ds = Dataset(opts)
    data = ds.read(ds.select("part")[0])
    defect = [s for s in data.test if s.label]
    assert len(defect) == 4 and all(len(s.masks) == 1 for s in defect)
    assert all(os.path.basename(s.masks[0]) == os.path.basename(s.path) for s in defect)
    clash = tmp_path / "clash"
    clash.mkdir()
    shutil.copy(os.path.join(src, "blob", "000.png"), clash / "000.png")
    os.makedirs(tmp_path / "m2")
    shutil.copy(os.path.join(src, "masks", "blob", "000_mask.png"), tmp_path / "m2" / "000.png")
    bad = DataOptions(data_format="folder", normal_dir=os.path.join(src, "good"),
                      abnormal_dir=[os.path.join(src, "blob"), str(clash)],
                      mask_dir=str(tmp_path / "m2"))
    with pytest.raises(Exception, match="matches both"):
        Dataset(bad).read("part")


def test_normal_split_is_seeded_recorded_and_enforced_at_evaluation(trees, tmp_path):
    src = os.path.join(trees["folder"], "brick")
    flags = ["--normal_dir", os.path.join(src, "good"), "--abnormal_dir",
             os.path.join(src, "blob"), "--normal_split", "0.25", "--category", "part",
             "--save_path", str(tmp_path / "o")]
    train.main(train.get_args([*flags, *FIT, "--seed", "5"]))
    meta = json.loads(_safetensors_meta(str(tmp_path / "o" / "ortho_resnet18_k8" /
                                            "part.safetensors")))
    held = meta["data"]["normal_split"]
    assert held["seed"] == 5 and len(held["test"]) == 2 and meta["n_train"] == 6
    rows = eval_script.main(eval_script.get_args([f for f in flags] + ["--k", "8"]))
    per_image = list(csv.DictReader(open(tmp_path / "o" / "ortho_resnet18_k8" /
                                         "per_image_part.csv")))
    normals = sorted(os.path.basename(r["path"]) for r in per_image if r["label"] == "0")
    assert normals == sorted(held["test"]) and rows[0]["n_test"] == 4
    with pytest.raises(Exception, match="was not fitted with --normal_split 0.5"):
        eval_script.main(eval_script.get_args(
            [f if f != "0.25" else "0.5" for f in flags] + ["--k", "8"]))


def test_btad_masks_share_the_image_stem(trees):
    data = Dataset(DataOptions(data_path=trees["btad"])).read("brick")
    defect = [s for s in data.test if s.label]
    assert defect and all(os.path.splitext(os.path.basename(s.masks[0]))[0] ==
                          os.path.splitext(os.path.basename(s.path))[0] for s in defect)
    assert {s.defect for s in data.test} == {"good", "ko"}


def test_a_mask_with_small_values_under_the_255_rule_is_warned_about(trees, tmp_path, caplog):
    """BTAD's rule is > 127; a mask written with 1s reads as empty, and the log says why."""
    from datasets.loading import read_mask
    dst = tmp_path / "m.png"
    Image.fromarray(np.eye(8, dtype=np.uint8)).save(dst)
    with caplog.at_level("WARNING"):
        assert not read_mask(str(dst), "gt127").any()
    assert "none above 127" in caplog.text and "--data_format visa" in caplog.text
