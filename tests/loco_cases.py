"""Small fixed MVTec LOCO cases for the parity tests (tests/test_official_parity.py): a
non-square image size, good images, logical and structural anomalies with several,
overlapping and disconnected defects, faint and absent signals, absolute and relative
saturations (one absolute threshold above its defect's area, one relative that truncates).

``loco_case`` rebuilds the same maps and ground truth from a seed; ``write_loco_case`` writes
them as MVTec LOCO ships them (``defects_config.json``, one PNG per defect with the defect's
pixel value) with the maps as float32 TIFFs where MVTec's ``evaluate_experiment.py`` reads them.
The official figures in the tests were computed by that script on these files."""
import json
import os

import numpy as np
from PIL import Image

H, W = 40, 56
CONFIG = [
    {"defect_name": "missing", "pixel_value": 255, "saturation_threshold": 1.0,
     "relative_saturation": True},
    {"defect_name": "extra", "pixel_value": 254, "saturation_threshold": 30,
     "relative_saturation": False},
    {"defect_name": "misplaced", "pixel_value": 253, "saturation_threshold": 0.5,
     "relative_saturation": True},
    {"defect_name": "scratch", "pixel_value": 252, "saturation_threshold": 1000,
     "relative_saturation": False},
    {"defect_name": "dent", "pixel_value": 251, "saturation_threshold": 0.25,
     "relative_saturation": True},
]


def _rect(r0, r1, c0, c1):
    m = np.zeros((H, W), dtype=bool)
    m[r0:r1, c0:c1] = True
    return m


# (test folder, stem, [(pixel value, defect mask, share of the signal)])
IMAGES = [
    ("good", "000", []), ("good", "001", []), ("good", "002", []), ("good", "003", []),
    ("logical_anomalies", "000", [(255, _rect(5, 15, 5, 20), 1.0)]),
    ("logical_anomalies", "001", [(254, _rect(2, 6, 2, 10) | _rect(30, 36, 40, 51), 0.1)]),
    ("logical_anomalies", "002", [(255, _rect(10, 20, 10, 30), 1.0),
                                  (253, _rect(15, 25, 20, 40), 0.5)]),
    ("structural_anomalies", "000", [(252, _rect(20, 30, 5, 15), 1.0)]),
    ("structural_anomalies", "001", [(251, _rect(33, 35, 50, 53), 0.0)]),
    ("structural_anomalies", "002", [(252, _rect(0, 3, 0, 56), 0.3),
                                     (251, _rect(25, 40, 30, 45), 1.0)]),
]


def loco_case(seed, signal, decimals=None, lift=0.0):
    """[(folder, stem, map float32 [H, W], [(pixel value, bool [H, W])])] in IMAGES' order:
    map i is the i-th draw of ``RandomState(seed).random_sample((H, W))``, plus ``lift`` on the
    whole map of an anomalous image (its defect-free pixels score higher than a good image's,
    as a model's do), plus ``signal`` times each defect's share on its pixels, rounded to
    ``decimals`` (ties) if given."""
    rng = np.random.RandomState(seed)
    out = []
    for folder, stem, defects in IMAGES:
        amap = rng.random_sample((H, W)) + (lift if defects else 0.0)
        for _, mask, share in defects:
            amap = amap + signal * share * mask
        if decimals is not None:
            amap = np.round(amap, decimals)
        out.append((folder, stem, amap.astype(np.float32), [(v, m) for v, m, _ in defects]))
    return out


def write_loco_case(case, data_root, maps_root, category="breakfast_box"):
    """The data set tree (images black, ground truth, defects_config.json) and the maps."""
    folder = os.path.join(data_root, category)
    import tifffile
    for d in ("train/good", "validation/good"):
        os.makedirs(os.path.join(folder, d), exist_ok=True)
    with open(os.path.join(folder, "defects_config.json"), "w") as fh:
        json.dump(CONFIG, fh)
    for kind, stem, amap, defects in case:
        os.makedirs(os.path.join(folder, "test", kind), exist_ok=True)
        Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(
            os.path.join(folder, "test", kind, f"{stem}.png"))
        for j, (value, mask) in enumerate(defects):
            gt = os.path.join(folder, "ground_truth", kind, stem)
            os.makedirs(gt, exist_ok=True)
            Image.fromarray((mask * value).astype(np.uint8)).save(
                os.path.join(gt, f"{j:03d}.png"))
        out = os.path.join(maps_root, category, "test", kind)
        os.makedirs(out, exist_ok=True)
        tifffile.imwrite(os.path.join(out, f"{stem}.tiff"), amap)
