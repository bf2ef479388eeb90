"""Export of a fitted model for deployment: the whole scoring graph (image -> anomaly map,
image score) with the Gaussian inside, plus deploy.json.

* ``paddle``: ``model.json`` (PIR; legacy ``model.pdmodel`` accepted) + ``model.pdiparams``, for
  Paddle Inference.
* ``onnx``: ``model.onnx`` (opset 17, dynamic batch), converted by paddle2onnx, for ONNX Runtime
  or any ONNX consumer. The graph is converted with the Gaussian as inputs, which are then made
  initializers with the ``onnx`` library; above protobuf's 2 GB limit (wide_resnet50_2 at k = 300
  is 1.47 GB of precision at 256 px already, 2.3 GB at 320 px) the Gaussian's bytes go to
  ``model.onnx.data`` beside it (ONNX external data), written straight from the arrays: no
  protobuf message holds them, whatever their size. Outputs are named ``anomaly_map`` [B, 1, H, W] and
  ``image_score`` [B].

deploy.json carries the pre-processing, thresholds, display range, metadata, the model's ignore
mask (a PNG in base64, applied after the graph exactly as predict.py applies it) and the SHA-256
of every file of the graph, so infer.py refuses files that belong to another export.
"""
import os
import shutil
import tempfile

import numpy as np

from datasets.ignore import encode_mask
from schema import DEPLOY_VERSION
from utils import atomic_path, ensure_dir, sha256_file, write_failed, write_json

from .graphs import export_static, graph_layer, to_onnx

FORMATS = ("paddle", "onnx")
EXTERNAL_ABOVE = 2 ** 31 - 1 - (64 << 20)      # protobuf's 2 GB limit, with a margin
ONNX_DATA = "model.onnx.data"


def _deploy_record(model, fmt, files):
    height, width = model.preprocess.input_hw
    meta = {k: v for k, v in model.meta.items() if k != "versions"}
    record = {"deploy_version": DEPLOY_VERSION, "format": fmt,
              "preprocess": model.preprocess.config(), "input_size": [height, width],
              "threshold": model.meta.get("threshold"), "display": model.meta.get("display"),
              "model": meta, "outputs": ["anomaly_map [B, 1, H, W]", "image_score [B]"]}
    ignore = model.ignore
    if ignore is not None:          # applied after the graph by infer.py (outputs.apply_ignore)
        record["ignore_mask"] = encode_mask(ignore)
    record.update(files)
    return record


def _external_tensor(name, array, location, offset):
    """An ONNX initializer whose bytes live in ``location`` at ``offset`` (ONNX external data):
    no protobuf message ever holds them, so any size works."""
    from onnx import TensorProto
    tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(array.shape),
                         data_location=TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", str(offset)),
                       ("length", str(array.nbytes))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def _bake_gaussian(src, dst, mean, precision):
    """Turn the ``mean`` / ``precision`` inputs of the ONNX graph ``src`` into initializers,
    name the outputs, and save to ``dst``; above the protobuf limit the Gaussian's bytes go to
    ``model.onnx.data`` beside it (page-aligned), written straight from the arrays.

    Returns:
        True if the Gaussian went to external data.
    """
    import onnx
    from onnx import numpy_helper
    model = onnx.load(src)
    graph = model.graph
    gaussian = [("mean", np.ascontiguousarray(mean, dtype=np.float32)),
                ("precision", np.ascontiguousarray(precision, dtype=np.float32))]
    external = model.ByteSize() + sum(a.nbytes for _, a in gaussian) > EXTERNAL_ABOVE
    if external:
        offset = 0
        with atomic_path(os.path.join(os.path.dirname(dst), ONNX_DATA)) as tmp, \
                open(tmp, "wb") as fh:
            for name, array in gaussian:
                fh.write(b"\0" * (-offset % 4096))
                offset += -offset % 4096
                graph.initializer.append(_external_tensor(name, array, ONNX_DATA, offset))
                fh.write(memoryview(array.reshape(-1)).cast("B"))
                offset += array.nbytes
    else:
        graph.initializer.extend(numpy_helper.from_array(a, name) for name, a in gaussian)
    inputs = [i for i in graph.input if i.name not in ("mean", "precision")]
    del graph.input[:]
    graph.input.extend(inputs)
    for out in graph.output:
        old = out.name
        new = "anomaly_map" if len(out.type.tensor_type.shape.dim) == 4 else "image_score"
        for node in graph.node:
            node.output[:] = [new if o == old else o for o in node.output]
            node.input[:] = [new if i == old else i for i in node.input]
        out.name = new
    onnx.save_model(model, dst)
    return external


def export(model, save_dir, fmt="paddle"):
    """Write ``model``'s deployment graph in ``fmt`` and deploy.json into ``save_dir``
    (atomically: a temporary folder, then renames); return the written paths."""
    ensure_dir(save_dir)
    try:
        return _export(model, save_dir, fmt)
    except OSError as exc:
        raise write_failed(save_dir, exc) from None


def _export(model, save_dir, fmt):
    tmp = tempfile.mkdtemp(prefix=".export.", dir=save_dir)
    try:
        if fmt == "paddle":
            graph, params = export_static(*graph_layer("deploy", model.detector), tmp)
            files = {"graph_file": os.path.basename(graph), "graph_sha256": sha256_file(graph),
                     "params_file": "model.pdiparams", "params_sha256": sha256_file(params)}
            names = [os.path.basename(graph), "model.pdiparams"]
        else:
            work = os.path.join(tmp, "work")
            os.makedirs(work)
            graph, params = export_static(*graph_layer("score", model.detector), work)
            to_onnx(graph, params, os.path.join(work, "inputs.onnx"))
            onnx_file = os.path.join(tmp, "model.onnx")
            external = _bake_gaussian(os.path.join(work, "inputs.onnx"), onnx_file,
                                      model.arrays["mean"], model.arrays["precision"])
            shutil.rmtree(work)
            files = {"graph_file": "model.onnx", "graph_sha256": sha256_file(onnx_file)}
            names = ["model.onnx"]
            if external:
                files.update({"data_file": ONNX_DATA,
                              "data_sha256": sha256_file(os.path.join(tmp, ONNX_DATA))})
                names.append(ONNX_DATA)
        write_json(os.path.join(tmp, "deploy.json"), _deploy_record(model, fmt, files))
        written = []
        for name in names + ["deploy.json"]:
            os.replace(os.path.join(tmp, name), os.path.join(save_dir, name))
            written.append(os.path.join(save_dir, name))
        return written
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
