"""Property-based fuzzing of the model-file reader (hypothesis): random bytes, random JSON
headers, and mutations of a real file's header, metadata and arrays must only ever be refused
with a ModelFileError, or load into a model that scores an image finitely.

FUZZ_EXAMPLES sets the examples per property (default 60, a few hundred in all for CI);
`FUZZ_EXAMPLES=2000 bash run_tests.sh -k fuzz` runs 10,000 (see docs/development.md).
"""
import json
import os
import struct
import uuid

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelfile import load_checked, read_tensors, write_tensors
from schema import ModelFileError
from utils import UserError, model_path

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 64, 2 ** 64) | st.floats() |
    st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                max_size=4),
    max_leaves=16)


@pytest.fixture(scope="module")
def real(fitted, tmp_path_factory):
    """A real fitted model, its parts, an image in the model's geometry, and a scratch folder."""
    from orthoad_runtime.transforms import load_rgb
    path = model_path(fitted["save"], "ortho", "resnet18", 20, "brick")
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
        data = fh.read()
    rgb = load_rgb(os.path.join(fitted["data"], "brick", "test", "scratch", "000.png"))
    return {"path": path, "header": header, "data": data, "rgb": rgb,
            "work": tmp_path_factory.mktemp("fuzz")}


def _write_raw(work, header_bytes, data=b""):
    path = os.path.join(work, f"{uuid.uuid4().hex}.safetensors")
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(header_bytes)) + header_bytes + data)
    return path


def _json_bytes(header):
    raw = json.dumps(header).encode()
    return raw + b" " * (-len(raw) % 8)


def _outcome(path, rgb):
    """'refused' (one-line ModelFileError / UserError), or 'finite' after scoring an image.
    Anything else (another exception, a non-finite score) fails the property."""
    from pipeline import model as models_io
    try:
        load_checked(path)                       # the reader alone: ModelFileError only
    except ModelFileError:
        return "refused"
    try:
        model = models_io.load(path)             # + the backbone it records
    except UserError:
        return "refused"
    maps, scores = model.score(model.preprocess.image(rgb)[None])
    assert np.isfinite(scores).all() and np.isfinite(maps[~np.isnan(maps)]).all(), path
    return "finite"


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes_are_refused(real, blob):
    path = os.path.join(real["work"], f"{uuid.uuid4().hex}.safetensors")
    with open(path, "wb") as fh:
        fh.write(blob)
    with pytest.raises(ModelFileError):
        load_checked(path)


@FUZZ
@given(JSON, st.binary(max_size=256))
def test_random_json_headers_are_refused(real, header, data):
    path = _write_raw(real["work"], _json_bytes(header), data)
    with pytest.raises(ModelFileError):
        load_checked(path)


FIELDS = ("dtype", "shape", "data_offsets")


@FUZZ
@given(st.data())
def test_mutated_header_entries(real, data):
    header = json.loads(json.dumps(real["header"]))
    name = data.draw(st.sampled_from(sorted(header)))
    action = data.draw(st.sampled_from(["replace", "field", "drop_field", "delete"]))
    if action == "replace":
        header[name] = data.draw(JSON)
    elif action == "delete":
        del header[name]
    elif isinstance(header[name], dict) and name != "__metadata__":
        field = data.draw(st.sampled_from(FIELDS))
        if action == "field":
            header[name][field] = data.draw(JSON)
        else:
            header[name].pop(field, None)
    else:                                       # __metadata__: one of its strings
        key = data.draw(st.sampled_from(sorted(header[name])))
        header[name][key] = data.draw(st.text(max_size=40) | JSON.map(json.dumps))
    path = _write_raw(real["work"], _json_bytes(header), real["data"])
    assert _outcome(path, real["rgb"]) in ("refused", "finite")


@FUZZ
@given(st.data())
def test_mutated_metadata(real, data):
    file_meta, arrays = read_tensors(real["path"])
    meta = json.loads(file_meta["meta"])
    target = meta
    keys = []
    while isinstance(target, dict) and target:          # a key at any depth
        key = data.draw(st.sampled_from(sorted(target)))
        keys.append(key)
        if not isinstance(target[key], dict) or data.draw(st.booleans()):
            break
        target = target[key]
    if data.draw(st.booleans()):
        target.pop(keys[-1], None)
    else:
        target[keys[-1]] = data.draw(JSON)
    file_meta["meta"] = json.dumps(meta)
    path = os.path.join(real["work"], f"{uuid.uuid4().hex}.safetensors")
    write_tensors(path, arrays, file_meta)
    assert _outcome(path, real["rgb"]) in ("refused", "finite")


@FUZZ
@given(st.data())
def test_mutated_arrays(real, data):
    """Elements of the arrays set to any float32 (NaN, inf, huge, tiny), or bytes flipped."""
    file_meta, arrays = read_tensors(real["path"])
    name = data.draw(st.sampled_from(sorted(arrays)))
    flat = arrays[name].reshape(-1)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, flat.size - 1))
        if flat.dtype.kind == "f":
            flat[i] = data.draw(st.floats(width=32) if flat.dtype == np.float32 else st.floats())
        else:
            flat[i] = data.draw(st.integers(0, 255))
    path = os.path.join(real["work"], f"{uuid.uuid4().hex}.safetensors")
    write_tensors(path, arrays, file_meta)
    if data.draw(st.booleans()):                        # and a flipped byte anywhere after
        with open(path, "r+b") as fh:
            size = os.path.getsize(path)
            pos = data.draw(st.integers(8, size - 1))
            fh.seek(pos)
            b = fh.read(1)
            fh.seek(pos)
            fh.write(bytes([b[0] ^ data.draw(st.integers(1, 255))]))
    assert _outcome(path, real["rgb"]) in ("refused", "finite")
