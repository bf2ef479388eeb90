"""Export of a fitted model for deployment: the whole scoring graph (image -> anomaly map,
image score) with the Gaussian (PatchCore: the memory bank) inside, plus deploy.json. PatchCore's
graph has a second input, ``scored`` [h*w] (1 for the patches that count for the image score,
from the ignore mask; ``orthoad_runtime.ignore.patch_mask``).

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

from orthoad_runtime.ignore import encode_mask
from orthoad_runtime.schema import DEPLOY_VERSION
from utils import atomic_path, ensure_dir, sha256_file, write_failed, write_json

from .graphs import export_static, graph_layer, to_onnx

FORMATS = ("paddle", "onnx")
EXTERNAL_ABOVE = 2 ** 31 - 1 - (64 << 20)      # protobuf's 2 GB limit, with a margin
ONNX_DATA = "model.onnx.data"


def _deploy_record(model, fmt, files):
    height, width = model.preprocess.input_hw
    meta = {k: v for k, v in model.meta.items() if k != "versions"}
    record = {"deploy_version": DEPLOY_VERSION, "format": fmt,
              "precision": model.precision,
              "preprocess": model.preprocess.config(), "input_size": [height, width],
              "threshold": model.meta.get("threshold"), "display": model.meta.get("display"),
              "model": meta, "outputs": ["anomaly_map [B, 1, H, W]", "image_score [B]"],
              "inputs": ["image [B, 3, H, W]"]}
    if model.meta.get("method") == "patchcore":
        grid = model.meta["grid"]
        record["inputs"].append(f"scored [{grid[0] * grid[1]}]: 1 for the patches of the "
                                f"{grid[0]}x{grid[1]} grid that count for the image score")
    ignore = model.ignore
    if ignore is not None:          # applied after the graph by infer.py (outputs.apply_ignore)
        record["ignore_mask"] = encode_mask(ignore)
    if model.precision == "int8":
        record["int8"] = {"calibration": model.meta["int8"]["calibration"],
                          "quantised": model.meta["int8"]["calibration"].get("quantised")}
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


def _bake_statistics(src, dst, stats):
    """Turn the statistics inputs of the ONNX graph ``src`` (a file or a ModelProto; ``stats``:
    {name: array}, the Gaussian's mean and precision or PatchCore's bank) into initializers,
    name the outputs, and save to ``dst``; above the protobuf limit their bytes go to
    ``<dst>.data`` beside it (page-aligned), written straight from the arrays.

    Returns:
        the external data file's name, or None.
    """
    import onnx
    from onnx import numpy_helper
    model = onnx.load(src) if isinstance(src, str) else src
    data_name = os.path.basename(dst) + ".data"
    graph = model.graph
    gaussian = [(name, np.ascontiguousarray(a, dtype=np.float32)) for name, a in stats.items()]
    external = model.ByteSize() + sum(a.nbytes for _, a in gaussian) > EXTERNAL_ABOVE
    if external:
        offset = 0
        with atomic_path(os.path.join(os.path.dirname(dst), data_name)) as tmp, \
                open(tmp, "wb") as fh:
            for name, array in gaussian:
                fh.write(b"\0" * (-offset % 4096))
                offset += -offset % 4096
                graph.initializer.append(_external_tensor(name, array, data_name, offset))
                fh.write(memoryview(array.reshape(-1)).cast("B"))
                offset += array.nbytes
    else:
        graph.initializer.extend(numpy_helper.from_array(a, name) for name, a in gaussian)
    inputs = [i for i in graph.input if i.name not in stats]
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
    return data_name if external else None


def _int8_graph(model):
    """The int8 deployment graph as one ONNX model (Gaussian inputs still open): the int8
    embedding graph (quantised backbone, ``pipeline.quantize``) joined to the float32 head."""
    import onnx
    from onnx import compose

    from .graphs import build, build_int8, default_cache
    cache = default_cache()
    embed = onnx.load(os.path.join(build_int8(model.detector, cache, model.meta["int8"]),
                                   "model.onnx"))
    head = onnx.load(os.path.join(build("head", model.detector, cache, "onnx"), "model.onnx"))
    for m in (embed, head):                           # one IR version and opset for both
        m.ir_version = max(embed.ir_version, head.ir_version)
    opset = max(o.version for o in list(embed.opset_import) + list(head.opset_import)
                if o.domain in ("", "ai.onnx"))
    embed, head = (onnx.version_converter.convert_version(m, opset)
                   if next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))
                   != opset else m for m in (embed, head))
    merged = compose.merge_models(embed, head, io_map=[(embed.graph.output[0].name, "y")],
                                  prefix1="backbone_")
    for i in merged.graph.input:                       # the input keeps its name: image
        if i.name == "backbone_image":
            i.name = "image"
    for node in merged.graph.node:
        node.input[:] = ["image" if n == "backbone_image" else n for n in node.input]
    return merged


def export(model, save_dir, fmt="paddle"):
    """Write ``model``'s deployment graph in ``fmt`` and deploy.json into ``save_dir``
    (atomically: a temporary folder, then renames); return the written paths."""
    ensure_dir(save_dir)
    try:
        return _export(model, save_dir, fmt)
    except OSError as exc:
        raise write_failed(save_dir, exc) from None


def _export(model, save_dir, fmt):
    if fmt == "paddle" and model.precision == "int8":
        from utils import UserError
        raise UserError("an int8 model is exported as ONNX (its int8 graph runs on ONNX "
                        "Runtime): pass --format onnx")
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
            name = "model_int8.onnx" if model.precision == "int8" else "model.onnx"
            if model.precision == "int8":
                src = _int8_graph(model)
            else:
                graph, params = export_static(*graph_layer("score", model.detector), work)
                src = to_onnx(graph, params, os.path.join(work, "inputs.onnx"))
            onnx_file = os.path.join(tmp, name)
            external = _bake_statistics(src, onnx_file, {
                name: model.arrays[name] for name in model.detector.stat_names})
            shutil.rmtree(work)
            files = {"graph_file": name, "graph_sha256": sha256_file(onnx_file)}
            names = [name]
            if external:
                files.update({"data_file": external,
                              "data_sha256": sha256_file(os.path.join(tmp, external))})
                names.append(external)
        write_json(os.path.join(tmp, "deploy.json"), _deploy_record(model, fmt, files))
        written = []
        for name in names + ["deploy.json"]:
            os.replace(os.path.join(tmp, name), os.path.join(save_dir, name))
            written.append(os.path.join(save_dir, name))
        return written
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
