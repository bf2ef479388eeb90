"""The runtime's ``Detector`` on a model file: the repository's side of the one API (an export
needs only ``orthoad_runtime.Detector.from_export``; a model file rebuilds its backbone from
its weights, so it needs Paddle and the repository)."""
import os

from orthoad_runtime.detector import GRAPH_NAMES, Detector
from orthoad_runtime.predictions import thresholds
from utils import UserError, sha256_file

from . import model as models_io


def from_model_file(path, engine="auto", threads=None, weights=None, batch_size=8):
    """A ``Detector`` scoring with a model file (``<category>.safetensors``) on ``engine``
    (auto, dygraph, inference, onnxruntime), the backbone built from ``weights`` or the weights
    the file records."""
    if not os.path.isfile(path):
        raise UserError(f"model file '{path}' does not exist: give a .safetensors file of "
                        "train.py")
    model = models_io.load(path, None, weights).use_engine(engine, None, threads)
    source = {"kind": "model file", "path": path, "sha256": sha256_file(path)}
    return Detector(model.run, model.preprocess, model.meta, model.engine,
                    thresholds(model.meta), model.ignore, model.meta.get("display"), source,
                    batch_size)


def open_detector(path, engine="auto", threads=None, weights=None, batch_size=8):
    """A model file or an export (what serve.py's run folders and exports hold); ``engine``
    and ``weights`` belong to model files: given for an export, they are an error."""
    if os.path.isdir(path) or path.lower().endswith(GRAPH_NAMES):
        if weights is not None or engine not in ("auto", None):
            raise UserError(f"'{path}' is an export, which runs on its own engine with the "
                            "weights it holds: leave --engine and --weights out for it")
        return Detector.from_export(path, threads=threads, batch_size=batch_size)
    return from_model_file(path, engine, threads, weights, batch_size)
