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

Deploy files: ``orthoad_runtime.schema.check_deploy`` (the checker, the geometry and the
threshold checks are shared from there).

Values that are trusted after these checks: numbers and names. Paths stored in a model
(``weights_source``'s file, ``data_path``) are only opened after ``trusted_path`` checks them
and logs it, and never decide where anything is written. NumPy only: the ONNX deployment path
(infer.py without Paddle) uses it too.
"""
import logging
import math
import os
import re

import numpy as np

from models.archs import CHANNELS, patchcore_dim, patchcore_grid
from orthoad_runtime.errors import ModelFileError
from orthoad_runtime.schema import MAX_SIDE, SHA256, Checker, geometry, thresholds

__all__ = ["ModelFileError", "check_meta", "check_arrays", "check_model", "check_ranges",
           "check_fp32_nodes", "trusted_path"]

logger = logging.getLogger(__name__)

METHODS = ("ortho", "sample", "patchcore")
MAX_NEIGHBOURS = 64
EPS_RANGE = (1e-6, 1e6)
MEAN_BOUND = 1e6
MAX_SEED = 2 ** 32 - 1


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
    c = Checker(path)
    if not isinstance(meta, dict):
        raise c.fail("has metadata that is not a JSON object")
    method = c.choice(meta, "method", METHODS)
    arch = c.choice(meta, "arch", tuple(CHANNELS))
    f = sum(CHANNELS[arch])
    k = c.int(meta, "k", 1, f)
    c.name(meta, "category")
    if method != "patchcore":
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
    thresholds(c, meta)
    (h, w), _, _ = geometry(c, meta)
    _common(c, meta, path)
    if method == "patchcore":
        return _patchcore(c, meta, arch, k, (h, w))
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
    return f, k, n_cells, (h, w)


def _common(c, meta, path):
    """What every method's metadata may hold: image digests, the int8 record."""
    if meta.get("digests") is not None:
        _digests(c, c.dict(meta, "digests"))
    if meta.get("precision", "fp32") != "fp32":
        c.choice(meta, "precision", ("fp32", "int8"))
        int8 = meta.get("int8") if isinstance(meta.get("int8"), dict) else {}
        check_ranges(int8.get("ranges"), f"model file '{path}'")
        check_fp32_nodes(int8.get("fp32_nodes", []), f"model file '{path}'")


def _patchcore(c, meta, arch, k, input_hw):
    """PatchCore's record: D from --patchcore_dim and the backbone, b, the coreset ratio, the
    layer2 grid; the facts its bank is checked against."""
    pc = c.dict(meta, "patchcore")
    dim = c.int(pc, "dim", 1, 1 << 16)
    c.number(pc, "coreset_ratio", 1e-6, 1.0)
    neighbours = c.int(pc, "neighbours", 1, MAX_NEIGHBOURS)
    if k != patchcore_dim(CHANNELS[arch], dim):
        raise c.fail(f"has k={k}, but PatchCore's dim {dim} on {arch} gives "
                     f"{patchcore_dim(CHANNELS[arch], dim)}")
    grid = patchcore_grid(input_hw)
    if meta.get("grid") is not None and c.pair(meta, "grid") != grid:
        raise c.fail(f"has a {meta['grid']} patch grid, but its {input_hw[0]}x{input_hw[1]} "
                     f"input gives {list(grid)} for PatchCore")
    return sum(CHANNELS[arch][1:]), k, neighbours, input_hw


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
    c = Checker(path)
    f, k, n_cells, (h, w) = facts          # PatchCore: n_cells is b, the bank's least size
    if meta.get("method") == "patchcore" and "bank" in arrays:
        bank = arrays["bank"]
        if bank.dtype != np.float32 or bank.ndim != 2 or bank.shape[1] != k or \
                bank.shape[0] < n_cells:
            raise c.fail(f"holds 'bank' as {bank.dtype} {list(bank.shape)}, not float32 [M, {k}] "
                         f"with M >= {n_cells} (from its metadata)")
        _bounds(c, "bank", bank, -MEAN_BOUND, MEAN_BOUND)
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


def check_ranges(ranges, where):
    """The stored int8 ranges table: {name: [min, max]} with finite min <= max (a
    ModelFileError naming ``where`` otherwise)."""
    ok = isinstance(ranges, dict) and ranges and all(
        isinstance(k, str) and isinstance(v, list) and len(v) == 2 and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x)
            for x in v) and v[0] <= v[1] for k, v in ranges.items())
    if not ok:
        raise ModelFileError(f"{where} holds no valid int8 calibration ranges: fit it again "
                             "with train.py --precision int8")
    return ranges


def check_fp32_nodes(nodes, where):
    """The stored list of convolutions kept in float32: plain node names."""
    if not isinstance(nodes, list) or not all(isinstance(n, str) and 0 < len(n) <= 200
                                              for n in nodes):
        raise ModelFileError(f"{where} holds a malformed list of float32 convolutions: fit it "
                             "again with train.py --precision int8")
    return nodes


def check_model(path, meta, arrays):
    """Check a model file's metadata and the arrays that were read; raise ModelFileError."""
    check_arrays(path, meta, arrays, check_meta(path, meta))


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
