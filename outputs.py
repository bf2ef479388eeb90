"""What a production line consumes from a prediction, the same for every engine (predict.py on
dygraph / Paddle Inference / ONNX Runtime, infer.py on an export):

* ignore masks: pixels that always differ (serial numbers, fixtures, labels) never raise a score,
  a region or a verdict; they become NaN (not scored) in the map, and the image score is the
  maximum over the other pixels;
* the binary defect mask at the camera's resolution: the original-size map above the pixel
  threshold, written as a PNG (0 / 255);
* the defect regions: 8-connected components of that mask, with their bounding box in original
  pixels, area, peak and mean score, written as JSON.

No model code here (infer.py uses it on exports).
"""
import base64
import io
import logging
import os

import numpy as np
from PIL import Image
from scipy import ndimage

from utils import UserError, atomic_path, ensure_dir, write_json

logger = logging.getLogger(__name__)

OUTPUTS_VERSION = 1


# --------------------------------------------------------------------------- ignore masks

def load_ignore_mask(path, preprocess):
    """An ignore mask file (white = ignore) -> bool [H, W] at the model's input size.

    A mask of the input size is used as it is; any other size (e.g. the camera frame) is brought
    to the input by the images' own geometry (resize, and crop if the model crops), with a log
    line. A mask that ignores every pixel is an error.
    """
    from datasets.transforms import load_mask
    raw = load_mask(path)
    if raw.shape == preprocess.input_hw:
        ignore = raw > 127
    else:
        ignore = preprocess.mask(raw)
        logger.info("ignore mask '%s' is %dx%d: brought to the model's %dx%d input by the "
                    "images' geometry", path, raw.shape[1], raw.shape[0], preprocess.width,
                    preprocess.height)
    check_ignore(ignore, path)
    return ignore


def check_ignore(ignore, source):
    if ignore is not None and ignore.all():
        raise UserError(f"the ignore mask {source} covers every pixel: nothing would be scored; "
                        "white marks the pixels to ignore, black those to inspect")
    return ignore


def combine(*masks):
    """Union of ignore masks (None entries skipped); None if there is none."""
    masks = [m for m in masks if m is not None]
    if not masks:
        return None
    out = masks[0].copy()
    for m in masks[1:]:
        out |= m
    return check_ignore(out, "given (model + --ignore_mask)")


def apply_ignore(maps, ignore):
    """maps [B, H, W] -> (maps with NaN on ignored pixels, image scores [B] = max of the rest)."""
    maps = np.asarray(maps, dtype=np.float32)
    if ignore is None:
        return maps, maps.reshape(len(maps), -1).max(axis=1)
    maps = np.where(ignore[None], np.float32(np.nan), maps)
    return maps, np.nanmax(maps.reshape(len(maps), -1), axis=1)


def original_map(preprocess, amap, original_hw, ignore=None):
    """The map [H, W] back on the original image [H0, W0] (``Preprocess.to_original``); NaN
    where not scored: outside a centre crop, and on ignored pixels (mapped back by nearest
    neighbour, without letting NaN spread through the bilinear resize)."""
    finite = np.isfinite(amap)
    base = amap if finite.all() else np.where(finite, amap, np.nanmin(amap))
    full = preprocess.to_original(base, original_hw)
    if ignore is not None and ignore.any():
        ig = preprocess.to_original(ignore.astype(np.float32), original_hw)
        full[np.nan_to_num(ig, nan=0.0) > 0.5] = np.nan
    return full


def encode_mask(mask):
    """bool [H, W] -> base64 PNG text (for deploy.json)."""
    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


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



# --------------------------------------------------------------------------- masks and regions

def regions(mask, full_map):
    """8-connected components of a bool mask [H0, W0] with their statistics on the original-size
    map: box [left, top, right, bottom) in pixels, area, peak and mean score; largest first."""
    lab, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=int))
    out = []
    for i, sl in enumerate(ndimage.find_objects(lab), start=1):
        inside = lab[sl] == i
        values = full_map[sl][inside]
        out.append({"box": [int(sl[1].start), int(sl[0].start), int(sl[1].stop),
                            int(sl[0].stop)],
                    "area": int(inside.sum()), "peak_score": float(np.nanmax(values)),
                    "mean_score": float(np.nanmean(values))})
    return sorted(out, key=lambda r: -r["area"])


def prediction_record(path, full_map, score, threshold, pixel_threshold):
    """The per-image result: verdict, thresholds and regions of the original-size map (NaN:
    not scored)."""
    mask = np.zeros(full_map.shape, dtype=bool) if pixel_threshold is None else \
        np.nan_to_num(full_map, nan=-np.inf) > pixel_threshold
    found = regions(mask, full_map)
    verdict = "unknown" if threshold is None else ("anomalous" if score > threshold else "normal")
    return {"outputs_version": OUTPUTS_VERSION, "image": os.path.abspath(path),
            "height": int(full_map.shape[0]), "width": int(full_map.shape[1]),
            "score": float(score), "verdict": verdict, "image_threshold": threshold,
            "pixel_threshold": pixel_threshold, "n_regions": len(found),
            "largest_region_area": found[0]["area"] if found else 0,
            "unscored_pixels": int(np.isnan(full_map).sum()), "regions": found}, mask


def write_outputs(out_dir, record, mask, stem=None):
    """<out_dir>/masks/<stem>.png (0 / 255 at the original size) and
    <out_dir>/regions/<stem>.json; return their paths."""
    stem = stem or os.path.splitext(os.path.basename(record["image"]))[0]
    mask_path = os.path.join(ensure_dir(os.path.join(out_dir, "masks")), f"{stem}.png")
    with atomic_path(mask_path) as tmp:
        Image.fromarray(mask.astype(np.uint8) * 255).save(tmp, format="PNG")
    json_path = os.path.join(ensure_dir(os.path.join(out_dir, "regions")), f"{stem}.json")
    write_json(json_path, dict(record, mask=os.path.abspath(mask_path)))
    return mask_path, json_path


class PredictionWriter:
    """The per-image outputs of predict.py and infer.py, from any engine: the figure
    (``save_pic``), the original-size mask PNG and regions JSON (``save_outputs``), and the
    folder's predictions.csv, written row by row as the images go (``utils.CsvLog``).

    Outputs are named by the image's file stem; two inputs with the same stem (a.png, a.jpg)
    get ``<stem>_<extension>`` (a_png, a_jpg), so that neither overwrites the other.

    Args:
        out_dir: output folder.
        preprocess: the model's ``Preprocess`` (geometry back to the original size).
        thresholds: (image threshold, pixel threshold), either may be None.
        display: the model's / deploy.json's metadata holding the display range.
        ignore: bool [H, W] ignored pixels, or None.
        files: every input file, to name outputs uniquely; table: write predictions.csv.
    """

    CSV_COLUMNS = ["path", "score", "verdict", "n_regions", "largest_region_area"]

    def __init__(self, out_dir, preprocess, thresholds, display, ignore=None, save_pic=True,
                 save_outputs=True, server_maps=None, files=(), table=False):
        self.out_dir, self.pre, self.display, self.ignore = out_dir, preprocess, display, ignore
        self.threshold, self.pixel_threshold = thresholds
        self.save_pic, self.save_outputs = save_pic, save_outputs
        self.server_maps = server_maps          # (root, category, split) or None
        self.names = unique_stems(files)
        self.rows = []
        self._table = None
        if table:
            from utils import CsvLog
            self._table = CsvLog(os.path.join(out_dir, "predictions.csv"), self.CSV_COLUMNS)

    def add(self, path, x, original_hw, amap, score):
        """One image: x the network input [3, H, W], amap its map [H, W] (NaN: ignored)."""
        import visualize
        full = original_map(self.pre, amap, original_hw, self.ignore)
        record, mask = prediction_record(path, full, score, self.threshold,
                                         self.pixel_threshold)
        row = {k: record[k] for k in ("score", "verdict", "n_regions", "largest_region_area")}
        row.update(path=path, map=amap)
        name = self.names.get(path) or os.path.splitext(os.path.basename(path))[0]
        if self.save_outputs:
            row["mask"], row["regions"] = write_outputs(self.out_dir, record, mask, name)
        if self.server_maps:
            root, category, split = self.server_maps
            row["server_map"] = write_server_map(root, category, split, path, full,
                                                 self.pixel_threshold, name)
        if self.save_pic:
            vmin, vmax = visualize.display_range(self.display, amap)
            row["picture"] = visualize.save_prediction(
                self.out_dir, name, self.pre.unnormalise(x), amap, float(score), self.threshold,
                vmin, vmax, self.pixel_threshold)
        self.rows.append(row)
        if self._table is not None:
            self._table.add(row)
        print(f"{path}\tscore {row['score']:.4f}\t{row['verdict']}\t{row['n_regions']} "
              "region(s)")
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
