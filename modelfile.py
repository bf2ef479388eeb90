"""Model files that hold data only: arrays and JSON metadata, never code.

Layout (the safetensors format, so any safetensors reader opens it too):

    8 bytes      little-endian unsigned length N of the header
    N bytes      JSON header: {"__metadata__": {str: str}, name: {"dtype", "shape",
                 "data_offsets": [begin, end]}, ...}, padded with spaces to a multiple of 8
    the arrays   raw little-endian, C order, one after another

Reading parses the JSON and copies bytes into NumPy arrays of the dtypes listed in ``DTYPES``;
nothing in the file is executed, whoever wrote it. The model's metadata is one JSON string under
``__metadata__["meta"]``.

Model files of format 1 (``<category>.pdparams``) were Python pickles, which can run code when
loaded. They are refused with a message that names ``convert_model.py``; that command reads them
with an unpickler that builds NumPy arrays and plain containers only (``safe_unpickle``), so even
the one-time conversion runs no code from the file. The same unpickler reads backbone weights
given with ``--weights`` (``paddle.save`` state dicts).
"""
import io
import json
import math
import os
import pickle
import struct

import numpy as np

from schema import ModelFileError, check_meta, check_model
from orthoad_runtime.util import is_pickle
from utils import UserError, atomic_path, hugepage_empty

FORMAT_NAME = "orthoad-paddle model"
FORMAT_VERSION = 2
MODEL_EXT = ".safetensors"
LEGACY_EXT = ".pdparams"
REQUIRED_ARRAYS = ("projection", "mean", "precision")
PATCHCORE_ARRAYS = ("bank",)

DTYPES = {"F32": np.float32, "F64": np.float64, "I32": np.int32, "I64": np.int64,
          "U8": np.uint8, "BOOL": np.bool_}
_CODES = {np.dtype(v): k for k, v in DTYPES.items()}
_MAX_HEADER = 64 << 20


# --------------------------------------------------------------------------- raw tensor files

def write_tensors(path, arrays, metadata):
    """Write ``arrays`` (name -> ndarray) and ``metadata`` (str -> str) atomically to ``path``."""
    header, offset, items = {"__metadata__": dict(metadata)}, 0, []
    for name, array in arrays.items():
        a = np.ascontiguousarray(array)
        if a.dtype.newbyteorder("<") not in _CODES:
            raise TypeError(f"array '{name}' has unsupported dtype {a.dtype}")
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)
        header[name] = {"dtype": _CODES[a.dtype], "shape": list(a.shape),
                        "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
        items.append(a)
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(struct.pack("<Q", len(raw)))
            fh.write(raw)
            for a in items:
                fh.write(memoryview(a.reshape(-1)).cast("B") if a.size else b"")
    return path


def _bad(path, why):
    return ModelFileError(f"'{path}' is not a readable model file ({why}): fit it again with "
                          "train.py")


def read_header(path):
    """(metadata dict, {name: (dtype, shape, begin, end)}, data start) with every field checked."""
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise _bad(path, "shorter than a header")
        (n,) = struct.unpack("<Q", head)
        if n > min(_MAX_HEADER, size - 8):
            raise _bad(path, "header length out of range")
        try:
            header = json.loads(fh.read(n).decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise _bad(path, "header is not JSON") from None
    if not isinstance(header, dict):
        raise _bad(path, "header is not a JSON object")
    meta = header.pop("__metadata__", {}) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise _bad(path, "metadata is not a map of strings")
    parsed = []
    for name, info in header.items():
        try:
            dtype = np.dtype(DTYPES[info["dtype"]])
            shape = tuple(_whole(s) for s in info["shape"])
            begin, end = (_whole(v) for v in info["data_offsets"])
            if len(info["data_offsets"]) != 2:
                raise ValueError
        except (KeyError, TypeError, ValueError, IndexError):
            raise _bad(path, f"entry '{name}' is malformed (dtype, shape and data_offsets "
                             "expected)") from None
        parsed.append((begin, name, dtype, shape, end))
    entries, expected = {}, 0
    for begin, name, dtype, shape, end in sorted(parsed, key=lambda e: (e[0], e[1])):
        if begin != expected or end - begin != dtype.itemsize * math.prod(shape) or \
                min(shape, default=0) < 0:
            raise _bad(path, f"entry '{name}' has inconsistent offsets")
        entries[name] = (dtype, shape, begin, end)
        expected = end
    start = 8 + n
    if start + expected > size:
        raise ModelFileError(f"model file '{path}' is truncated ({size} of {start + expected} "
                             "bytes): fit it again with train.py")
    return meta, entries, start


def _whole(v):
    """A JSON integer (not a bool, not a float, not a string)."""
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(v)
    return v


def read_tensors(path, names=None):
    """(metadata, {name: ndarray}) of a tensor file; ``names`` limits which arrays are read."""
    meta, entries, start = read_header(path)
    arrays = {}
    with open(path, "rb", buffering=0) as fh:
        for name, (dtype, shape, begin, end) in entries.items():
            if names is not None and name not in names:
                continue
            out = hugepage_empty(shape, dtype)
            fh.seek(start + begin)
            view, done = memoryview(out.reshape(-1)).cast("B"), 0
            while done < end - begin:
                got = fh.readinto(view[done:done + (256 << 20)])
                if not got:
                    raise _bad(path, "ends early")
                done += got
            arrays[name] = out
    return meta, arrays


# --------------------------------------------------------------------------- model files

def save_model(path, meta, arrays):
    """Save a fitted model: ``meta`` (a JSON-able dict) and ``arrays`` (name -> ndarray)."""
    return write_tensors(path, arrays, {"format": FORMAT_NAME,
                                        "format_version": str(FORMAT_VERSION),
                                        "meta": json.dumps(meta, sort_keys=True)})


def legacy_message(path):
    return (f"'{path}' is a pickle-based model file (format 1), and loading a pickle can run "
            f"code: if you trust it, convert it once with 'python convert_model.py {path}' and "
            "use the .safetensors file it writes")


def load_model(path, expect=None, names=None):
    """Load a model file and check it against ``expect``.

    Args:
        path: the model file.
        expect: dict of meta keys (method, arch, k, ...) whose values must match; None values
            are not checked.
        names: arrays to read (default: all).

    Returns:
        (meta dict, {name: ndarray}).
    """
    if not os.path.isfile(path):
        legacy = os.path.splitext(path)[0] + LEGACY_EXT
        if path.endswith(MODEL_EXT) and os.path.isfile(legacy):
            raise ModelFileError(f"model file '{path}' does not exist, but '{legacy}' does: "
                                 + legacy_message(legacy).split(": ", 1)[1])
        raise ModelFileError(f"model file '{path}' does not exist: run train.py with the same "
                             "--save_path, --method, --arch and --k first")
    if is_pickle(path):
        raise ModelFileError(legacy_message(path))
    file_meta, arrays = read_tensors(path, names)
    if file_meta.get("format") != FORMAT_NAME or "meta" not in file_meta:
        raise ModelFileError(f"'{path}' is not an OrthoAD-Paddle model file: fit one with "
                             "train.py")
    try:
        version = int(file_meta.get("format_version", "0"))
    except ValueError:
        raise _bad(path, "its format version is not a number") from None
    if version > FORMAT_VERSION:
        raise ModelFileError(f"model file '{path}' has format version {version}, newer than "
                             f"this code's {FORMAT_VERSION}: update OrthoAD-Paddle")
    try:
        meta = json.loads(file_meta["meta"])
    except (ValueError, RecursionError):
        raise _bad(path, "its metadata is not JSON") from None
    if not isinstance(meta, dict):
        raise _bad(path, "its metadata is not a JSON object")
    required = PATCHCORE_ARRAYS if meta.get("method") == "patchcore" else REQUIRED_ARRAYS
    missing = [n for n in required if n not in arrays and (names is None or n in names)]
    if missing:
        raise ModelFileError(f"model file '{path}' lacks {', '.join(missing)}: fit it again")
    for key, value in (expect or {}).items():
        if value is not None and meta.get(key) != value:
            raise ModelFileError(f"model file '{path}' was made with {key}={meta.get(key)}, not "
                                 f"{value}: pass --{key} {meta.get(key)} or fit a new model")
    return meta, arrays


def load_checked(path, expect=None, names=None):
    """``load_model`` and then every value checked against the schema (``schema.check_model``):
    how the scripts open a model they will use."""
    meta, arrays = load_model(path, expect, names)
    check_model(path, meta, arrays)
    return meta, arrays


def read_meta(path):
    """A model file's metadata only (its arrays are not read), checked against the schema."""
    meta = load_model(path, names=())[0]
    check_meta(path, meta)
    return meta


# --------------------------------------------------------------------------- pickles, safely

_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.numeric", "_frombuffer"), ("numpy.core.numeric", "_frombuffer"),
    ("collections", "OrderedDict"), ("_codecs", "encode"),
}


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickles NumPy arrays, dicts, lists, strings and numbers; refuses every other global."""

    def find_class(self, module, name):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"'{module}.{name}' is not allowed")
        return super().find_class(module, name)


def safe_unpickle(path):
    """Read a pickle of arrays and plain containers without running code from it.

    Raises:
        UserError naming the file if it holds anything else (or is not a pickle).
    """
    try:
        with open(path, "rb") as fh:
            obj = _ArraysOnlyUnpickler(io.BufferedReader(fh)).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, struct.error) as exc:
        raise UserError(f"'{path}' holds something other than arrays ({exc}): refusing to load "
                        "it; use a file that contains only arrays") from None
    _check_plain(obj, path)
    return obj


def _check_plain(obj, path):
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise UserError(f"'{path}' holds an array of Python objects: refusing to load it")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _check_plain(k, path)
            _check_plain(v, path)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _check_plain(v, path)
    elif not isinstance(obj, (str, bytes, int, float, bool, type(None))):
        raise UserError(f"'{path}' holds a {type(obj).__name__}: refusing to load it")


def convert_legacy(src, dst):
    """Convert a format-1 (pickle) model file into this format; return (dst, meta)."""
    if not os.path.isfile(src):
        raise UserError(f"'{src}' does not exist: give the path of a format-1 .pdparams model")
    if not is_pickle(src):
        raise UserError(f"'{src}' is not a pickle-based (format 1) model file: nothing to "
                        "convert")
    record = safe_unpickle(src)
    if not isinstance(record, dict) or "meta" not in record or \
            any(not isinstance(record.get(n), np.ndarray) for n in REQUIRED_ARRAYS):
        raise UserError(f"'{src}' is not an OrthoAD-Paddle model file (format 1): nothing to "
                        "convert")
    meta = json.loads(record["meta"])
    meta.setdefault("converted_from", os.path.basename(src))
    save_model(dst, meta, {n: np.asarray(record[n], np.float32) for n in REQUIRED_ARRAYS})
    return dst, meta
