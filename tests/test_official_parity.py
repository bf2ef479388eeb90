"""Parity with material the project did not write: MVTec LOCO's official evaluation
(``evaluate_experiment.py`` v2.0; figures it computed on the fixed cases of ``loco_cases``),
MVTec AD 2's upload checker (``check_and_prepare_data_for_upload.py``; its rules encoded
below), and the trees the real downloads ship (VisA's published ``split_csv/1cls.csv``, BTAD's
products, MVTec AD 2's file names and private-set counts).

Figures and rules are carried here as data; none of those programs' code is."""
import os
import shutil

import numpy as np
import pytest
import tifffile
from PIL import Image

import metrics
import train
from datasets.layouts import DataOptions, Dataset
from datasets.synthetic import generate
from loco_cases import CONFIG, loco_case, write_loco_case

LIMITS = (0.01, 0.05, 0.1, 0.3, 1.0)
# MVTec's evaluate_experiment.py (default --curve_max_distance 0.001) on write_loco_case's files:
# (seed, signal, decimals, lift) -> AU-sPRO per subset and limit, image AUROC per subset
OFFICIAL_LOCO = {
    "A": ((0, 0.5, None, 0.2), {
        "logical": (0.465397272687, 0.543942558458, 0.666057054767, 0.835987103832,
                    0.949912160743),
        "structural": (0.419606055433, 0.44506010803, 0.523992910154, 0.71762582562,
                       0.892914796378),
        "mean": (0.44250166406, 0.494501333244, 0.595024982461, 0.776806464726,
                 0.921413478561)},
        {"logical": 1.0, "structural": 1.0, "mean": 1.0}),
    "B": ((1, 0.3, 2, 0.1), {
        "logical": (0.336574888647, 0.451495242247, 0.538280018123, 0.704332595138,
                    0.883291119657),
        "structural": (0.362055522353, 0.383155604907, 0.397759267801, 0.537534127873,
                       0.804674228594),
        "mean": (0.3493152055, 0.417325423577, 0.468019642962, 0.620933361506,
                 0.843982674125)},
        {"logical": 0.875, "structural": 0.875, "mean": 0.875}),
    "C": ((2, 0.0, None, 0.0), {
        "logical": (0.00107003934, 0.040530240933, 0.09471713052, 0.28080571137,
                    0.653186041308),
        "structural": (0.011632618469, 0.032719630809, 0.065909779925, 0.217471409803,
                       0.653334103798),
        "mean": (0.006351328905, 0.036624935871, 0.080313455223, 0.249138560587,
                 0.653260072553)},
        {"logical": 0.5, "structural": 0.583333333333, "mean": 0.541666666667}),
}
# The official code samples thresholds until adjacent curve points are within 0.001 (at most 10
# refinement steps); the project integrates the exact curve. With ties (case B, 2 decimals)
# the official sampling reaches every threshold and both agree to round-off.
TOLERANCE = {"A": 1e-3, "B": 1e-9, "C": 1e-3}


# --------------------------------------------------------------------------- LOCO oracles

def saturation(value, relative, area):
    """As MVTec's GroundTruthChannel.get_saturation_area: int(value * area) or min(value,
    area) (at least 1: the official code divides by zero below)."""
    return max(int(value * area) if relative else min(value, area), 1)


def spro_long_way(maps, defects, limit):
    """AU-sPRO from its definition, for one subset: ``maps`` [H, W] and per map its defects
    [(bool mask, saturation_threshold, relative)]. Every distinct score v a curve point
    (score >= v positive): FPR over the defect-free pixels of ALL the maps, sPRO the mean over
    all defects of min(positives / saturation, 1); from (0, 0) to (1, 1), trapezoids, the
    value at the limit interpolated between the first point past it and the one before."""
    free = np.sort(np.concatenate([
        m[~np.logical_or.reduce([d for d, _, _ in ds] + [np.zeros(m.shape, bool)])]
        for m, ds in zip(maps, defects)]))
    regions = [(np.sort(m[d]), saturation(t, rel, int(d.sum())))
               for m, ds in zip(maps, defects) for d, t, rel in ds]
    values = np.unique(np.concatenate([m.ravel() for m in maps]))[::-1]
    fpr = (free.size - np.searchsorted(free, values, side="left")) / free.size
    spro = np.mean([np.minimum((r.size - np.searchsorted(r, values, side="left")) / s, 1.0)
                    for r, s in regions], axis=0)
    x, y = np.r_[0.0, fpr, 1.0], np.r_[0.0, spro, 1.0]
    past = int(np.flatnonzero(x > limit)[0]) if (x > limit).any() else len(x)
    area = float(np.sum(0.5 * (y[1:past] + y[:past - 1]) * np.diff(x[:past])))
    if past < len(x):
        at = y[past - 1] + (y[past] - y[past - 1]) * (limit - x[past - 1]) / \
            (x[past] - x[past - 1])
        area += 0.5 * (at + y[past - 1]) * (limit - x[past - 1])
    return area / limit


def read_loco_ground_truth(category_folder):
    """{(test folder, stem): [(bool mask, saturation_threshold, relative)]} for every test
    image, read as MVTec's evaluation reads them: each PNG of ground_truth/<type>/<stem>/ one
    defect (its non-zero pixels), its pixel value looked up in defects_config.json."""
    import json
    with open(os.path.join(category_folder, "defects_config.json")) as fh:
        config = {e["pixel_value"]: e for e in json.load(fh)}
    out = {}
    test = os.path.join(category_folder, "test")
    for folder in sorted(os.listdir(test)):
        for f in sorted(os.listdir(os.path.join(test, folder))):
            stem = os.path.splitext(f)[0]
            gt = os.path.join(category_folder, "ground_truth", folder, stem)
            defects = []
            for png in sorted(os.listdir(gt)) if os.path.isdir(gt) else []:
                a = np.array(Image.open(os.path.join(gt, png)))
                entry = config[int(a.max())]
                defects.append((a > 0, entry["saturation_threshold"],
                                entry["relative_saturation"]))
            out[(folder, stem)] = defects
    return out


def _case_subsets(case):
    config = {c["pixel_value"]: c for c in CONFIG}
    by_folder = {}
    for folder, _, amap, defects in case:
        by_folder.setdefault(folder, []).append(
            (amap, [(m, config[v]["saturation_threshold"], config[v]["relative_saturation"])
                    for v, m in defects]))
    return by_folder


@pytest.mark.parametrize("name", sorted(OFFICIAL_LOCO))
def test_spro_equals_mvtec_loco_official_evaluation(name):
    """metrics.SaturatedPRO and the long-way oracle on the fixed cases against the official
    figures, at every official limit, per subset (good images added) and their mean."""
    case, spro, _ = OFFICIAL_LOCO[name]
    by_folder = _case_subsets(loco_case(*case))
    sp = metrics.SaturatedPRO()
    for folder, items in by_folder.items():
        for amap, defects in items:
            sp.add(amap, folder, defects)
    got = {}
    for sub in ("logical", "structural"):
        got[sub] = sp.area(("good", f"{sub}_anomalies"))
        items = by_folder["good"] + by_folder[f"{sub}_anomalies"]
        for limit, want in zip(LIMITS, spro[sub]):
            assert got[sub][limit] == pytest.approx(want, abs=TOLERANCE[name]), (sub, limit)
            assert spro_long_way([m for m, _ in items], [d for _, d in items], limit) == \
                pytest.approx(got[sub][limit], abs=1e-12)
    for limit, want in zip(LIMITS, spro["mean"]):
        mean = 0.5 * (got["logical"][limit] + got["structural"][limit])
        assert mean == pytest.approx(want, abs=TOLERANCE[name])


def test_spro_takes_the_false_positive_rate_over_every_defect_free_pixel():
    """Regression guard for the defect the official figures exposed: the FPR taken over the
    good images only gives another (higher) curve, far from the official figure."""
    case, spro, _ = OFFICIAL_LOCO["A"]
    by_folder = _case_subsets(loco_case(*case))
    good_only = metrics.SaturatedPRO()
    for amap, _ in by_folder["good"]:
        good_only.add(amap, "all")
    for amap, defects in by_folder["logical_anomalies"]:        # defect pixels only
        only = np.where(np.logical_or.reduce([d for d, _, _ in defects]), amap, np.nan)
        good_only.add(only, "all", defects)
    wrong = good_only.area(("all",))[0.05]
    assert abs(wrong - spro["logical"][1]) > 0.01


def test_spro_with_full_relative_saturation_on_components_is_the_official_au_pro():
    """Each connected component a defect saturating at its whole area: AU-PRO, whose official
    MVTec AD figures (ALGORITHM.md, case C) are an independent check of the curve."""
    from scipy import ndimage

    from conftest import official_case
    gts, maps = official_case(1, 0.5, None)
    sp = metrics.SaturatedPRO()
    for g, m in zip(gts, maps):
        lab, k = ndimage.label(g, structure=np.ones((3, 3)))
        sp.add(m, "all", [(lab == i, 1.0, True) for i in range(1, k + 1)])
    got = sp.area(("all",), (0.3, 0.1, 0.05, 1.0))
    for limit, want in zip((0.3, 0.1, 0.05, 1.0), (0.654686197004, 0.565374659154,
                                                   0.547070790138, 0.875627632323)):
        assert got[limit] == pytest.approx(want, abs=1e-6)      # official FPR is float32


def test_loco_image_auroc_follows_the_official_curve_and_scikit_learn_without_ties():
    from sklearn.metrics import roc_auc_score
    rng = np.random.default_rng(0)
    ok, nok = rng.random(30), rng.random(20) + 0.2
    assert metrics.loco_image_auroc(ok, nok) == pytest.approx(
        roc_auc_score([0] * 30 + [1] * 20, np.r_[ok, nok]), abs=1e-12)
    for name, (case, _, roc) in OFFICIAL_LOCO.items():
        by_folder = _case_subsets(loco_case(*case))
        good = [m.max() for m, _ in by_folder["good"]]
        for sub in ("logical", "structural"):
            bad = [m.max() for m, _ in by_folder[f"{sub}_anomalies"]]
            assert metrics.loco_image_auroc(good, bad) == pytest.approx(roc[sub], abs=1e-9), \
                (name, sub)
    assert metrics.loco_image_auroc([], [1.0]) is None


@pytest.mark.parametrize("name", sorted(OFFICIAL_LOCO))
def test_loco_pipeline_reads_the_shipped_tree_into_the_official_figures(name, tmp_path):
    """The reader (defects_config.json, one PNG per defect) and pipeline.loco's subsets, limits,
    column names and means, fed the fixed case's maps: results.csv's columns equal the
    official figures."""
    from datasets import mvtec_loco
    from datasets.loading import read_channel
    from pipeline.loco import LocoMetrics
    params, spro, roc = OFFICIAL_LOCO[name]
    case = loco_case(*params)
    write_loco_case(case, str(tmp_path / "data"), str(tmp_path / "maps"))
    data = mvtec_loco.read(str(tmp_path / "data"), "breakfast_box")
    maps = {(f, s): m for f, s, m, _ in case}
    lm = LocoMetrics(data.defects)
    for sample in data.test:
        stem = os.path.splitext(os.path.basename(sample.path))[0]
        amap = maps[(sample.defect, stem)]
        lm.add(sample, [read_channel(p, amap.shape) for p in sample.masks], amap)
    row = lm.rows()
    for sub in ("logical", "structural", "mean"):
        for limit, code, want in zip(LIMITS, ("01", "05", "10", "30", "100"), spro[sub]):
            assert row[f"au_spro_{code}_{sub}"] == pytest.approx(want, abs=TOLERANCE[name])
        assert row[f"image_auroc_{sub}"] == pytest.approx(roc[sub], abs=1e-9)


@pytest.mark.parametrize("entry,message", [
    ({"saturation_threshold": 1, "relative_saturation": True}, "decimal number in (0, 1]"),
    ({"saturation_threshold": 1.5, "relative_saturation": True}, "decimal number in (0, 1]"),
    ({"saturation_threshold": 150.0, "relative_saturation": False}, "whole number of pixels"),
    ({"saturation_threshold": 0, "relative_saturation": False}, "whole number of pixels"),
    ({"pixel_value": 0}, "pixel_value from 1 to 255"),
])
def test_defects_config_is_checked_as_the_official_parser_checks_it(entry, message, tmp_path):
    """MVTec's DefectConfig asserts: relative thresholds are floats in (0, 1], absolute ones
    integers (a real config: pushpins' 6300 pixels, absolute)."""
    import json

    from datasets.mvtec_loco import read_defects_config
    from utils import UserError
    good = {"defect_name": "1_additional_pushpin", "pixel_value": 255,
            "saturation_threshold": 6300, "relative_saturation": False}
    path = tmp_path / "defects_config.json"
    path.write_text(json.dumps([good]))
    assert read_defects_config(str(path))[255]["saturation_threshold"] == 6300
    path.write_text(json.dumps([dict(good, **entry)]))
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_defects_config(str(path))


# --------------------------------------------------------------------------- MVTec AD 2

# check_and_prepare_data_for_upload.py: files per object in each private set
AD2_COUNTS = {"can": 321, "fabric": 314, "fruit_jelly": 255, "rice": 277, "sheet_metal": 142,
              "vial": 276, "wallplugs": 232, "walnuts": 228}


def check_server_tree(root, counts, image_sizes):
    """MVTec AD 2's upload checker's rules: exactly anomaly_images (and optionally
    anomaly_images_thresholded) and no file at the top; in each exactly the objects' folders;
    in each object exactly test_private and test_private_mixed; in each exactly
    NNN_regular.tiff (NNN_mixed in the mixed set), NNN from 000 to count - 1; TIFFs one-channel
    float16, PNGs one-channel with values 0 and 255 only. The checker wants all eight objects:
    ``counts`` names the ones written. Also each map has its image's size (the server scores
    the maps against ground truth at the original size)."""
    def entries(folder):
        items = os.listdir(folder)
        return ({i for i in items if os.path.isdir(os.path.join(folder, i))},
                {i for i in items if os.path.isfile(os.path.join(folder, i))})
    dirs, files = entries(root)
    assert "anomaly_images" in dirs and dirs <= {"anomaly_images", "anomaly_images_thresholded"}
    assert not files, f"superfluous files {files}"
    for top, ext in (("anomaly_images", ".tiff"), ("anomaly_images_thresholded", ".png")):
        if top not in dirs:
            continue
        objs, files = entries(os.path.join(root, top))
        assert objs == set(counts) and not files, (top, objs, files)
        for obj, n in counts.items():
            sets, files = entries(os.path.join(root, top, obj))
            assert sets == {"test_private", "test_private_mixed"} and not files, (obj, sets)
            for s, suffix in (("test_private", "regular"), ("test_private_mixed", "mixed")):
                folder = os.path.join(root, top, obj, s)
                sub, names = entries(folder)
                assert not sub and names == {f"{i:03d}_{suffix}{ext}" for i in range(n)}, \
                    (folder, len(names))
                for f in names:
                    path = os.path.join(folder, f)
                    a = tifffile.imread(path) if ext == ".tiff" else np.asarray(Image.open(path))
                    assert a.ndim == 2, path
                    assert a.shape == image_sizes[(obj, s, os.path.splitext(f)[0])], path
                    if ext == ".tiff":
                        assert a.dtype == np.float16 and np.isfinite(a).all(), path
                    else:
                        assert set(np.unique(a)) <= {0, 255}, path


def test_save_server_maps_is_what_the_ad2_checker_accepts(tmp_path):
    """One object at its real name and count (sheet_metal, 142 images in each private set),
    images 64 px scored at 32 so that the maps go back to the original size; --save_maps puts
    the labelled test_public maps in their own tree, the server tree holds nothing else."""
    data = tmp_path / "ad2"
    generate(str(data), ("brick",), n_train=6, n_good=3, n_defect=3, size=64, seed=0,
             layout="mvtec_ad2", n_private=2 * AD2_COUNTS["sheet_metal"])
    shutil.move(str(data / "brick"), str(data / "sheet_metal"))
    server, maps = tmp_path / "server", tmp_path / "maps"
    row = train.main(train.get_args([
        "--data_path", str(data), "--category", "sheet_metal", "--no-pretrained", "--k", "8",
        "--input_size", "32", "--batch_size", "32", "--save_path", str(tmp_path / "out"),
        "--eval", "--eval_PRO", "--eval_size", "original", "--save_server_maps", str(server),
        "--save_maps", str(maps)]))[0]
    sizes = {}
    for s in ("test_private", "test_private_mixed"):
        for f in os.listdir(data / "sheet_metal" / s):
            sizes[("sheet_metal", s, os.path.splitext(f)[0])] = \
                Image.open(data / "sheet_metal" / s / f).size[::-1]
    check_server_tree(str(server), {"sheet_metal": AD2_COUNTS["sheet_metal"]}, sizes)
    # results.csv's AD 2 metrics against oracles on the float32 test_public maps it saved:
    # AU-PRO@0.05 (the official definition written directly), SegF1 at the model's pixel
    # threshold (scikit-learn's F1 over all pixels), pixel AUROC
    from sklearn.metrics import f1_score, roc_auc_score

    from conftest import official_au_pro
    data_ad2 = Dataset(DataOptions(data_path=str(data))).read("sheet_metal")
    amaps, gts = [], []
    for s in data_ad2.test:
        stem = os.path.splitext(os.path.basename(s.path))[0]
        amaps.append(tifffile.imread(maps / "sheet_metal" / "test" / s.defect / f"{stem}.tiff"))
        gts.append(np.asarray(Image.open(s.masks[0])) > 127 if s.masks else
                   np.zeros(amaps[-1].shape, bool))
    amaps, gts = np.stack(amaps), np.stack(gts)
    assert amaps.dtype == np.float32 and amaps.shape[1:] == (64, 64)
    assert row["au_pro_05"] == pytest.approx(official_au_pro(gts, amaps, 0.05), abs=1e-6)
    assert row["pixel_auroc"] == pytest.approx(roc_auc_score(gts.ravel(), amaps.ravel()),
                                               abs=1e-9)
    assert row["seg_f1"] == pytest.approx(
        f1_score(gts.ravel(), amaps.ravel() > np.float32(row["pixel_threshold"])), abs=1e-9)


def test_the_checker_rules_refuse_what_the_checker_refuses(tmp_path):
    """The encoded rules fail on the tree the old --save_maps wrote (a test_public folder
    beside the private sets), on a missing file and on float32 maps."""
    good = tmp_path / "good"
    sizes = {}
    for s, suffix in (("test_private", "regular"), ("test_private_mixed", "mixed")):
        for i in range(3):
            stem = f"{i:03d}_{suffix}"
            sizes[("can", s, stem)] = (4, 6)
            for top, ext in (("anomaly_images", ".tiff"), ("anomaly_images_thresholded", ".png")):
                os.makedirs(good / top / "can" / s, exist_ok=True)
                if ext == ".tiff":
                    tifffile.imwrite(good / top / "can" / s / f"{stem}{ext}",
                                     np.zeros((4, 6), np.float16))
                else:
                    Image.fromarray(np.zeros((4, 6), np.uint8)).save(good / top / "can" / s /
                                                                     f"{stem}{ext}")
    check_server_tree(str(good), {"can": 3}, sizes)
    for breakage in ("public", "missing", "float32"):
        bad = tmp_path / breakage
        shutil.copytree(good, bad)
        if breakage == "public":
            os.makedirs(bad / "anomaly_images" / "can" / "test_public" / "good")
        elif breakage == "missing":
            os.remove(bad / "anomaly_images" / "can" / "test_private" / "001_regular.tiff")
        else:
            tifffile.imwrite(bad / "anomaly_images" / "can" / "test_private" / "001_regular.tiff",
                             np.zeros((4, 6), np.float32))
        with pytest.raises(AssertionError):
            check_server_tree(str(bad), {"can": 3}, sizes)


def test_ad2_reader_takes_the_shipped_names(tmp_path):
    """good/ and bad/ each numbered from 000 (the same stems in both), lighting and shift
    variants, masks <stem>_mask.png; the private sets unlabelled."""
    generate(str(tmp_path / "d"), ("brick",), n_train=4, n_good=6, n_defect=6, size=32,
             layout="mvtec_ad2")
    data = Dataset(DataOptions(data_path=str(tmp_path / "d"))).read("brick")
    stems = {(s.defect, os.path.splitext(os.path.basename(s.path))[0]) for s in data.test}
    assert ("good", "000_regular") in stems and ("bad", "000_regular") in stems
    assert {st.split("_", 1)[1] for _, st in stems} >= {"regular", "overexposed", "shift_1"}
    for s in data.test:
        if s.label:
            stem = os.path.splitext(os.path.basename(s.path))[0]
            assert s.masks == (os.path.join(tmp_path, "d", "brick", "test_public",
                                            "ground_truth", "bad", f"{stem}_mask.png"),)
    assert sorted(data.unlabelled) == ["test_private", "test_private_mixed"]


# --------------------------------------------------------------------------- VisA, BTAD

# rows of VisA's published split_csv/1cls.csv (its header; CRLF line endings; train rows in
# the file's own order, not sorted; normal rows with an empty mask column)
VISA_ROWS = [
    "object,split,label,image,mask",
    "candle,train,normal,candle/Data/Images/Normal/0836.JPG,",
    "candle,train,normal,candle/Data/Images/Normal/0451.JPG,",
    "candle,train,normal,candle/Data/Images/Normal/0112.JPG,",
    "candle,test,normal,candle/Data/Images/Normal/0001.JPG,",
    "candle,test,anomaly,candle/Data/Images/Anomaly/000.JPG,candle/Data/Masks/Anomaly/000.png",
    "candle,test,anomaly,candle/Data/Images/Anomaly/001.JPG,candle/Data/Masks/Anomaly/001.png",
    "pcb1,train,normal,pcb1/Data/Images/Normal/0484.JPG,",
    "pcb1,train,normal,pcb1/Data/Images/Normal/0107.JPG,",
    "pcb1,test,normal,pcb1/Data/Images/Normal/0003.JPG,",
    "pcb1,test,anomaly,pcb1/Data/Images/Anomaly/099.JPG,pcb1/Data/Masks/Anomaly/099.png",
]


def test_visa_reads_its_published_split_file_as_shipped(tmp_path):
    """Every row into its split and label; CRLF line endings; masks of value 1 and 2 (VisA's
    class indices) mark defects."""
    from datasets.loading import load_test_item
    from orthoad_runtime.transforms import Preprocess
    root = tmp_path / "visa"
    os.makedirs(root / "split_csv")
    (root / "split_csv" / "1cls.csv").write_bytes(("\r\n".join(VISA_ROWS) + "\r\n").encode())
    rng = np.random.default_rng(0)
    for i, row in enumerate(VISA_ROWS[1:]):
        image, mask = row.split(",")[3:]
        os.makedirs(os.path.dirname(root / image), exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(
            root / image, format="JPEG")
        if mask:
            os.makedirs(os.path.dirname(root / mask), exist_ok=True)
            m = np.zeros((24, 32), np.uint8)
            m[4:10, 5:12] = 1 + i % 2
            Image.fromarray(m).save(root / mask)
    ds = Dataset(DataOptions(data_path=str(root)))
    assert ds.layout == "visa" and ds.select("all") == ["candle", "pcb1"]
    for cat in ("candle", "pcb1"):
        data = ds.read(cat)
        rows = [r.split(",") for r in VISA_ROWS[1:] if r.startswith(cat + ",")]
        assert sorted(data.train) == sorted(str(root / r[3]) for r in rows if r[1] == "train")
        assert sorted((s.path, s.label, s.masks) for s in data.test) == sorted(
            (str(root / r[3]), int(r[2] == "anomaly"), (str(root / r[4]),) if r[4] else ())
            for r in rows if r[1] == "test")
        for s in data.test:
            if s.label:
                assert load_test_item(s, Preprocess((32, 32))).mask_orig.sum() == 6 * 7 * 255


def test_btad_products_with_their_own_file_types(tmp_path):
    """Product 01: .bmp images and .png masks; 02: .png and .png; 03: .bmp and .bmp; masks named
    as their images."""
    generate(str(tmp_path / "b"), ("brick", "grass", "gravel"), n_train=3, n_good=1,
             n_defect=3, size=32, layout="btad")
    ds = Dataset(DataOptions(data_path=str(tmp_path / "b")))
    for cat, (image_ext, mask_ext) in zip(("brick", "grass", "gravel"),
                                          ((".bmp", ".png"), (".png", ".png"), (".bmp", ".bmp"))):
        data = ds.read(cat)
        assert all(p.endswith(image_ext) for p in data.train)
        bad = [s for s in data.test if s.label]
        assert len(bad) == 3
        for s in bad:
            assert len(s.masks) == 1 and s.masks[0].endswith(mask_ext)
            assert os.path.splitext(os.path.basename(s.masks[0]))[0] == \
                os.path.splitext(os.path.basename(s.path))[0]
