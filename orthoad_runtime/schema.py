"""What a deploy.json may hold (``check_deploy``): the pre-processing, thresholds, display
range, category, the graph files' names (plain file names in the export folder) and SHA-256
digests, the ignore mask; every value read from it is checked here before anything uses it,
and every failure is one ``ModelFileError`` line naming the file and the fix. The checker and
the geometry and threshold checks are shared with the model-file schema (the repository's
``schema.py``). NumPy and PIL only.
"""
import base64
import binascii
import io
import math
import re

import numpy as np

from .errors import ModelFileError

PLAIN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
MAX_SIDE = 16384
GRAPH_FILES = ("model.json", "model.pdmodel", "model.onnx", "model_int8.onnx")
DEPLOY_VERSION = 2


class Checker:
    def __init__(self, path, what="model file", fix="fit it again with train.py"):
        self.path, self.what, self.fix = path, what, fix

    def fail(self, why):
        return ModelFileError(f"{self.what} '{self.path}' {why}: {self.fix}")

    def dict(self, d, key, optional=False):
        v = d.get(key)
        if v is None and optional:
            return None
        if not isinstance(v, dict):
            raise self.fail(f"has no valid '{key}' record")
        return v

    def int(self, d, key, lo=None, hi=None, optional=False):
        v = d.get(key)
        if v is None and optional:
            return None
        if isinstance(v, bool) or not isinstance(v, int) or (lo is not None and v < lo) or \
                (hi is not None and v > hi):
            rng = f" in {lo}..{hi}" if hi is not None else (f" >= {lo}" if lo is not None else "")
            raise self.fail(f"has {key}={v!r}, not an integer{rng}")
        return v

    def number(self, d, key, lo=None, hi=None, optional=False):
        v = d.get(key)
        if v is None and optional:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or \
                (lo is not None and v < lo) or (hi is not None and v > hi):
            raise self.fail(f"has {key}={v!r}, not a finite number"
                            + (f" in [{lo:g}, {hi:g}]" if lo is not None and hi is not None
                               else ""))
        return float(v)

    def choice(self, d, key, choices):
        v = d.get(key)
        if v not in choices:
            raise self.fail(f"has {key}={v!r}, not one of {', '.join(map(str, choices))}")
        return v

    def name(self, d, key):
        v = d.get(key)
        if not isinstance(v, str) or not PLAIN_NAME.match(v) or v in (".", ".."):
            raise self.fail(f"has {key}={v!r}, not a plain name (letters, digits, _ . + -)")
        return v

    def pair(self, d, key, lo=1, hi=MAX_SIDE):
        v = d.get(key)
        if not isinstance(v, (list, tuple)) or len(v) != 2 or any(
                isinstance(x, bool) or not isinstance(x, int) or not lo <= x <= hi for x in v):
            raise self.fail(f"has {key}={v!r}, not two integers in {lo}..{hi}")
        return int(v[0]), int(v[1])


def thresholds(c, meta):
    thr = c.dict(meta, "threshold", optional=True)
    if thr is not None:
        c.number(thr, "image", optional=True)
        c.number(thr, "pixel", optional=True)
    disp = c.dict(meta, "display", optional=True)
    if disp is not None:
        c.number(disp, "vmin", optional=True)
        c.number(disp, "vmax", optional=True)


def geometry(c, meta):
    """(H, W) of the input, checked against the geometry record (or the legacy resize / crop)."""
    geo = meta.get("geometry")
    if geo is None:                                   # models made before the geometry record
        crop = c.int(meta, "crop_size", 32, MAX_SIDE)
        resize = c.int(meta, "resize", crop, MAX_SIDE)
        return (crop, crop), "crop", resize
    if not isinstance(geo, dict):
        raise c.fail("has no valid 'geometry' record")
    mode = c.choice(geo, "mode", ("whole", "crop"))
    h, w = c.pair(geo, "input_size", 32, MAX_SIDE)
    resize = None
    if mode == "whole" and (h % 16 or w % 16):
        raise c.fail(f"has a whole-image input of {h}x{w}, not multiples of 16")
    if mode == "crop":
        resize = c.int(geo, "resize", max(h, w), MAX_SIDE)
        if h != w:
            raise c.fail(f"has a centre crop of {h}x{w}, which is not square")
    for key, (lo, hi) in (("mean", (-10.0, 10.0)), ("std", (0.01, 100.0))):
        v = geo.get(key)       # ImageNet's normalisation: mean about 0.45, std about 0.23
        if not isinstance(v, list) or len(v) != 3 or any(
                isinstance(x, bool) or not isinstance(x, (int, float)) or not lo <= x <= hi
                for x in v):
            raise c.fail(f"has geometry {key}={v!r}, not three numbers in [{lo:g}, {hi:g}]")
    return (h, w), mode, resize


# --------------------------------------------------------------------------- deploy files

def check_deploy(path, deploy):
    """Check a deploy.json written by export_model.py; return it."""
    c = Checker(path, "deploy file", "export the model again with export_model.py")
    if not isinstance(deploy, dict):
        raise c.fail("is not a JSON object")
    version = c.int(deploy, "deploy_version", 1)
    if version > DEPLOY_VERSION:
        raise ModelFileError(f"deploy file '{path}' has version {version}, newer than this "
                             f"code's {DEPLOY_VERSION}: update OrthoAD-Paddle")
    fmt = c.choice(deploy, "format", ("paddle", "onnx"))
    pre = c.dict(deploy, "preprocess")
    (h, w), _, _ = geometry(c, {"geometry": pre})
    if c.pair(deploy, "input_size", 32, MAX_SIDE) != (h, w):
        raise c.fail(f"has input_size {deploy['input_size']}, but its pre-processing gives "
                     f"{[h, w]}")
    thresholds(c, deploy)
    model = c.dict(deploy, "model")
    c.name(model, "category")
    if model.get("method") == "patchcore":      # its graph takes the patches that count
        grid = (-(-h // 8), -(-w // 8))
        if c.pair(model, "grid") != grid:
            raise c.fail(f"has a PatchCore patch grid of {model['grid']}, but its {h}x{w} input "
                         f"gives {list(grid)}")
    graph = c.choice(deploy, "graph_file", GRAPH_FILES)
    precision = c.choice(deploy, "precision", ("fp32", "int8")) \
        if deploy.get("precision") is not None else "fp32"
    if (fmt == "onnx") != graph.endswith(".onnx") or \
            (precision == "int8") != (graph == "model_int8.onnx"):
        raise c.fail(f"names graph_file {graph} for the {precision} {fmt} format")
    digests = [("graph_file", "graph_sha256")]
    if fmt == "paddle":
        c.choice(deploy, "params_file", ("model.pdiparams",))
        digests.append(("params_file", "params_sha256"))
    elif deploy.get("data_file") is not None:
        c.choice(deploy, "data_file", (graph + ".data",))
        digests.append(("data_file", "data_sha256"))
    for _, key in digests:
        if not isinstance(deploy.get(key), str) or not SHA256.match(deploy[key]):
            raise c.fail(f"has no valid {key}")
    if deploy.get("ignore_mask") is not None:
        mask = decode_mask(deploy["ignore_mask"], c)
        if mask.shape != (h, w):
            raise c.fail(f"holds an ignore mask of {mask.shape[1]}x{mask.shape[0]}, not the "
                         f"input's {w}x{h}")
        if mask.all():
            raise c.fail("holds an ignore mask that covers every pixel")
    return deploy


def decode_mask(text, checker=None):
    """base64 PNG text -> bool [H, W] (a ModelFileError if it is not one)."""
    from PIL import Image, UnidentifiedImageError
    try:
        raw = base64.b64decode(text, validate=True)
        with Image.open(io.BytesIO(raw)) as img:
            if img.width * img.height > MAX_SIDE * MAX_SIDE:
                raise ValueError("too large")
            return np.asarray(img.convert("L")) > 127
    except (binascii.Error, TypeError, ValueError, OSError, UnidentifiedImageError,
            Image.DecompressionBombError):
        c = checker or Checker("deploy.json", "deploy file",
                                "export the model again with export_model.py")
        raise c.fail("holds an ignore mask that is not a base64 PNG") from None
