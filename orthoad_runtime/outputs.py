"""What a production line consumes from a prediction, written to files the same way for every
engine and caller (predict.py, infer.py; the records come from ``orthoad_runtime.predictions``):

* ``masks/<name>.png``: the binary defect mask at the image's resolution (0 / 255);
* ``regions/<name>.json``: the image's result record (score, relative score, verdict,
  thresholds, the rule each follows, regions with box, area, peak and mean score);
* ``<name>.png``: the figure (``--save_pic``);
* ``predictions.csv``: a row per image, written as the images go;
* the MVTec AD 2 evaluation server's form of the maps (``write_server_map``).

No model code here.
"""
import logging
import os

import numpy as np
from PIL import Image

from .util import atomic_path, ensure_dir, write_json

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- MVTec AD 2 server form

MAPS = "anomaly_images"
MASKS = "anomaly_images_thresholded"
FLOAT16_MAX = float(np.finfo(np.float16).max)


def server_arrays(full, pixel_threshold):
    """Original-size map [H0, W0] (NaN: not scored) -> (float16 map, uint8 0/255 mask or None)."""
    finite = np.isfinite(full)
    low = float(full[finite].min()) if finite.any() else 0.0
    m = np.clip(np.where(finite, full, low), -FLOAT16_MAX, FLOAT16_MAX).astype(np.float16)
    mask = None if pixel_threshold is None else \
        ((np.nan_to_num(full, nan=-np.inf) > pixel_threshold).astype(np.uint8) * 255)
    return m, mask


def write_server_map(root, category, split, image_path, full, pixel_threshold, stem=None):
    """Write one image's original-size map as float16 TIFF (and its mask binarised at the
    pixel threshold, 0 / 255 PNG) in the form the MVTec AD 2 evaluation server accepts:
    ``<root>/anomaly_images/<category>/<split>/<stem>.tiff`` and
    ``<root>/anomaly_images_thresholded/<category>/<split>/<stem>.png``; ``split`` is the image's
    folder below the object (test_private, test_private_mixed, test_public/bad). Unscored (NaN)
    pixels become the image's smallest score and scores above float16's 65504 are clipped:
    the server expects finite maps."""
    import tifffile
    stem = stem or os.path.splitext(os.path.basename(image_path))[0]
    amap, mask = server_arrays(full, pixel_threshold)
    path = os.path.join(ensure_dir(os.path.join(root, MAPS, category, split)), f"{stem}.tiff")
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, amap)
    if mask is not None:
        mpath = os.path.join(ensure_dir(os.path.join(root, MASKS, category, split)), f"{stem}.png")
        with atomic_path(mpath) as tmp:
            Image.fromarray(mask).save(tmp, format="PNG")
    return path


# --------------------------------------------------------------------------- per-image files

def write_outputs(out_dir, prediction, name):
    """<out_dir>/masks/<name>.png (0 / 255 at the original size) and
    <out_dir>/regions/<name>.json; return their paths."""
    mask_path = os.path.join(ensure_dir(os.path.join(out_dir, "masks")), f"{name}.png")
    with atomic_path(mask_path) as tmp:
        Image.fromarray(prediction.mask.astype(np.uint8) * 255).save(tmp, format="PNG")
    json_path = os.path.join(ensure_dir(os.path.join(out_dir, "regions")), f"{name}.json")
    write_json(json_path, dict(prediction.record(), mask=os.path.abspath(mask_path)))
    return mask_path, json_path


class PredictionWriter:
    """The per-image outputs of predict.py and infer.py, from any engine: the figure
    (``save_pic``), the original-size mask PNG and regions JSON (``save_outputs``), and the
    folder's predictions.csv, written row by row as the images go (``utils.CsvLog``).

    Outputs are named by the image's file stem; two inputs with the same stem (a.png, a.jpg)
    get ``<stem>_<extension>`` (a_png, a_jpg), so that neither overwrites the other.

    Args:
        out_dir: output folder.
        display: the model's / deploy.json's metadata holding the display range.
        server_maps: (root, category, split) to also write MVTec AD 2 server-form maps.
        files: every input file, to name outputs uniquely; table: write predictions.csv.
    """

    CSV_COLUMNS = ["path", "score", "relative_score", "verdict", "n_regions",
                   "largest_region_area"]

    def __init__(self, out_dir, display, save_pic=True, save_outputs=True, server_maps=None,
                 files=(), table=False):
        self.out_dir, self.display = out_dir, display
        self.save_pic, self.save_outputs = save_pic, save_outputs
        self.server_maps = server_maps
        self.names = unique_stems(files)
        self.rows = []
        self._table = None
        if table:
            from .util import CsvLog
            self._table = CsvLog(os.path.join(out_dir, "predictions.csv"), self.CSV_COLUMNS)

    def add(self, p):
        """Write the outputs of one ``orthoad_runtime.predictions.Prediction``; return its row."""
        record = p.record()
        row = {k: record[k] for k in ("score", "relative_score", "verdict", "n_regions",
                                      "largest_region_area")}
        path = p.path or f"image_{len(self.rows):05d}"
        row.update(path=path, map=p.anomaly_map)
        name = self.names.get(path) or os.path.splitext(os.path.basename(path))[0]
        if self.save_outputs:
            row["mask"], row["regions"] = write_outputs(self.out_dir, p, name)
        if self.server_maps:
            root, category, split = self.server_maps
            row["server_map"] = write_server_map(root, category, split, path, p.full_map,
                                                 p.pixel_threshold, name)
        if self.save_pic:
            from orthoad_runtime.figure import save_prediction_figure
            row["picture"] = save_prediction_figure(
                os.path.join(ensure_dir(self.out_dir), f"{name}.png"), p, self.display, name)
        self.rows.append(row)
        if self._table is not None:
            self._table.add(row)
        print(f"{path}\t{p.console_line()}")
        return row

    def finish(self):
        """Close predictions.csv (if written); return its path or None."""
        return None if self._table is None else self._table.close()


def unique_stems(files):
    """{path: output name}: the file's stem, or ``<stem>_<extension>`` where two files share a
    stem (a.png and a.jpg), with a counter if that still clashes."""
    by_stem = {}
    for f in files:
        by_stem.setdefault(os.path.splitext(os.path.basename(f))[0], []).append(f)
    names, used = {}, set()
    for stem, paths in by_stem.items():
        for f in paths:
            name = stem if len(paths) == 1 else \
                f"{stem}_{os.path.splitext(f)[1].lstrip('.').lower() or 'noext'}"
            base, i = name, 1
            while name in used:
                i += 1
                name = f"{base}_{i}"
            used.add(name)
            names[f] = name
    return names
