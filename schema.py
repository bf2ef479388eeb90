"""What a model file and a deploy.json may hold: every value read from them is checked here
before anything uses it, and every failure is one ``ModelFileError`` line naming the file and
the fix.

Model files (``check_model``): the keys a model needs, with types and ranges (k within the
backbone's feature dimension, input sides of at least 32 and, for whole-image models, multiples
of 16, cells dividing the patch grid, finite thresholds, a category that is a plain name), and
the arrays' dtypes and shapes consistent with the metadata and with each other. The Gaussian
must be finite and bounded: a precision matrix (Sigma + eps I)^-1 has its eigenvalues, hence
all its entries, within 1 / eps, and a positive diagonal; a mean beyond 1e6 or a projection
entry beyond 1 comes from no fit. Within these bounds every image scores finitely.

Deploy files (``check_deploy``): the pre-processing, thresholds, display range, category, the
graph files' names (plain file names in the export folder) and SHA-256 digests, the ignore mask.

Values that are trusted after these checks: numbers and names. Paths stored in a model
(``weights_source``'s file, ``data_path``) are only opened after ``trusted_path`` checks them
and logs it, and never decide where anything is written. NumPy only: the ONNX deployment path
(infer.py without Paddle) uses it too.
"""
import base64
import binascii
import io
import logging
import math
import os
import re

import numpy as np

from models.archs import CHANNELS
from utils import UserError

logger = logging.getLogger(__name__)

PLAIN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
METHODS = ("ortho", "sample")
EPS_RANGE = (1e-6, 1e6)
MEAN_BOUND = 1e6
MAX_SIDE = 16384
MAX_SEED = 2 ** 32 - 1
GRAPH_FILES = ("model.json", "model.pdmodel", "model.onnx", "model_int8.onnx")
DEPLOY_VERSION = 2


class ModelFileError(UserError):
    """A model or deploy file that cannot be used (missing, truncated, foreign, legacy, too new,
    or holding values outside the schema)."""


class _Checker:
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


def _thresholds(c, meta):
    thr = c.dict(meta, "threshold", optional=True)
    if thr is not None:
        c.number(thr, "image", optional=True)
        c.number(thr, "pixel", optional=True)
    disp = c.dict(meta, "display", optional=True)
    if disp is not None:
        c.number(disp, "vmin", optional=True)
        c.number(disp, "vmax", optional=True)


def _geometry(c, meta):
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


def _cell(c, meta, grid):
    cell = meta.get("cell", 1)
    if isinstance(cell, list) and len(cell) == 2:
        ch, cw = c.pair(meta, "cell", 1, MAX_SIDE)
    else:
        ch = cw = c.int(meta, "cell", 1, MAX_SIDE)
    if grid[0] % ch or grid[1] % cw:
        raise c.fail(f"has cells of {ch}x{cw}, which do not divide its {grid[0]}x{grid[1]} patch "
                     "grid")
    return ch, cw


def _digests(c, record):
    """The image digests (``datasets.digest``): base64 text of whole 8-byte digests."""
    import base64
    import binascii
    for name in ("statistics", "validation", "calibration", "test"):
        text = record.get(name, "")
        try:
            ok = isinstance(text, str) and \
                len(base64.b64decode(text.encode("ascii"), validate=True)) % 8 == 0
        except (binascii.Error, UnicodeEncodeError, ValueError):
            ok = False
        if not ok:
            raise c.fail(f"has malformed image digests ({name})")


def check_meta(path, meta):
    """Check a model's metadata; return the facts the arrays are checked against: (F, k, number
    of Gaussians C, input (H, W))."""
    c = _Checker(path)
    if not isinstance(meta, dict):
        raise c.fail("has metadata that is not a JSON object")
    c.choice(meta, "method", METHODS)
    arch = c.choice(meta, "arch", tuple(CHANNELS))
    f = sum(CHANNELS[arch])
    k = c.int(meta, "k", 1, f)
    c.name(meta, "category")
    c.number(meta, "eps", *EPS_RANGE)
    source = meta.get("weights_source")
    seed = re.match(r"^random:seed=(\d{1,10})$", source) if isinstance(source, str) else None
    if not isinstance(source, str) or not (source.startswith(("imagenet:", "file:")) or (
            seed and int(seed.group(1)) <= MAX_SEED)):
        raise c.fail(f"has weights_source={source!r}, not imagenet:..., file:PATH or "
                     f"random:seed=N (0 <= N <= {MAX_SEED})")
    if not isinstance(meta.get("weights_sha256"), str) or \
            not SHA256.match(meta["weights_sha256"]):
        raise c.fail("has no valid weights_sha256")
    c.int(meta, "seed", 0, MAX_SEED, optional=True)
    c.int(meta, "n_train", 1, optional=True)
    if meta.get("feature_dim") is not None and c.int(meta, "feature_dim") != f:
        raise c.fail(f"has feature_dim {meta['feature_dim']}, but {arch} gives {f}")
    _thresholds(c, meta)
    (h, w), _, _ = _geometry(c, meta)
    grid = (-(-h // 4), -(-w // 4))
    if meta.get("grid") is not None and c.pair(meta, "grid") != grid:
        raise c.fail(f"has a {meta['grid']} patch grid, but its {h}x{w} input gives "
                     f"{list(grid)}")
    ch, cw = _cell(c, meta, grid)
    n_cells = (grid[0] // ch) * (grid[1] // cw)
    if meta.get("n_cells") is not None and c.int(meta, "n_cells") != n_cells:
        raise c.fail(f"has n_cells {meta['n_cells']}, but its grid and cells give {n_cells}")
    if meta.get("sums") is not None:
        c.int(c.dict(meta, "sums"), "n_images", 2)
    if meta.get("digests") is not None:
        _digests(c, c.dict(meta, "digests"))
    if meta.get("precision", "fp32") != "fp32":
        c.choice(meta, "precision", ("fp32", "int8"))
        from runtime.quantize import check_fp32_nodes, check_ranges
        int8 = meta.get("int8") if isinstance(meta.get("int8"), dict) else {}
        check_ranges(int8.get("ranges"), f"model file '{path}'")
        check_fp32_nodes(int8.get("fp32_nodes", []), f"model file '{path}'")
    return f, k, n_cells, (h, w)


def _array(c, arrays, name, dtype, shape):
    a = arrays.get(name)
    if a is None:
        raise c.fail(f"lacks the array '{name}'")
    if a.dtype != np.dtype(dtype) or tuple(a.shape) != tuple(shape):
        raise c.fail(f"holds '{name}' as {a.dtype} {list(a.shape)}, not {np.dtype(dtype)} "
                     f"{list(shape)} (from its metadata)")
    return a


def _bounds(c, name, a, lo, hi):
    if a.size == 0:
        return
    low, high = float(a.min()), float(a.max())          # NaN propagates: one pass each
    if not (math.isfinite(low) and math.isfinite(high)):
        raise c.fail(f"holds non-finite values (NaN or inf) in '{name}'")
    if low < lo or high > hi:
        raise c.fail(f"holds '{name}' values in [{low:.3g}, {high:.3g}], outside [{lo:.3g}, "
                     f"{hi:.3g}], which no fit produces")


def check_arrays(path, meta, arrays, facts):
    """Check the arrays that were read against the metadata (``check_meta``'s facts)."""
    c = _Checker(path)
    f, k, n_cells, (h, w) = facts
    if "projection" in arrays:
        _bounds(c, "projection", _array(c, arrays, "projection", np.float32, (f, k)),
                -1.0 - 1e-4, 1.0 + 1e-4)
    if "mean" in arrays:
        _bounds(c, "mean", _array(c, arrays, "mean", np.float32, (n_cells, k)), -MEAN_BOUND,
                MEAN_BOUND)
    if "precision" in arrays:
        p = _array(c, arrays, "precision", np.float32, (n_cells, k, k))
        limit = (1.0 / meta["eps"]) * 1.001                 # eigenvalues of (S + eps I)^-1
        _bounds(c, "precision", p, -limit, limit)
        if p.size and float(np.diagonal(p, axis1=1, axis2=2).min()) <= 0.0:
            raise c.fail("holds a precision matrix with a non-positive diagonal, which no "
                         "positive definite covariance gives")
    if "ignore" in arrays:
        ig = _array(c, arrays, "ignore", np.uint8, (h, w))
        if ig.size and int(ig.max()) > 1:
            raise c.fail("holds an ignore mask with values other than 0 and 1")
        if ig.size and ig.all():
            raise c.fail("holds an ignore mask that covers every pixel")
    if "sums_s2_upper" in arrays or meta.get("sums") is not None:
        _array(c, arrays, "sums_shift", np.float32, (n_cells, k))
        _array(c, arrays, "sums_s1", np.float64, (n_cells, k))
        _array(c, arrays, "sums_s2_upper", np.float64, (n_cells, k * (k + 1) // 2))
        for name in ("sums_shift", "sums_s1", "sums_s2_upper"):
            _bounds(c, name, arrays[name], -np.inf, np.inf)


def check_model(path, meta, arrays):
    """Check a model file's metadata and the arrays that were read; raise ModelFileError."""
    check_arrays(path, meta, arrays, check_meta(path, meta))


# --------------------------------------------------------------------------- deploy files

def check_deploy(path, deploy):
    """Check a deploy.json written by export_model.py; return it."""
    c = _Checker(path, "deploy file", "export the model again with export_model.py")
    if not isinstance(deploy, dict):
        raise c.fail("is not a JSON object")
    version = c.int(deploy, "deploy_version", 1)
    if version > DEPLOY_VERSION:
        raise ModelFileError(f"deploy file '{path}' has version {version}, newer than this "
                             f"code's {DEPLOY_VERSION}: update OrthoAD-Paddle")
    fmt = c.choice(deploy, "format", ("paddle", "onnx"))
    pre = c.dict(deploy, "preprocess")
    (h, w), _, _ = _geometry(c, {"geometry": pre})
    if c.pair(deploy, "input_size", 32, MAX_SIDE) != (h, w):
        raise c.fail(f"has input_size {deploy['input_size']}, but its pre-processing gives "
                     f"{[h, w]}")
    _thresholds(c, deploy)
    model = c.dict(deploy, "model")
    c.name(model, "category")
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
        c = checker or _Checker("deploy.json", "deploy file",
                                "export the model again with export_model.py")
        raise c.fail("holds an ignore mask that is not a base64 PNG") from None


# --------------------------------------------------------------------------- paths in files

def trusted_path(value, kind, fix):
    """A path read from a file, allowed to be opened (never written to): an existing file or
    folder, logged. Raises ModelFileError naming ``fix`` otherwise."""
    want_dir = kind == "folder"
    ok = isinstance(value, str) and value and "\0" not in value and \
        (os.path.isdir(value) if want_dir else os.path.isfile(value))
    if not ok:
        raise ModelFileError(f"the {kind} '{value}' recorded in the model is not there: {fix}")
    logger.info("using the %s the model records: %s (checked: an existing %s, only read)", kind,
                value, kind)
    return value
