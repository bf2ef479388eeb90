"""Static graphs of a model for the compiled engines, built once per run and cached.

Two run-time graphs:

* ``embed``: image [B, 3, H, W] -> embeddings [B, h*w, k] (backbone + projection): the fit.
* ``score``: (image, mean [C, k], precision [C, k, k]) -> (map [B, 1, H, W], score [B]): the
  whole scoring graph with the Gaussian as INPUTS, so one graph serves every category of a run.

Neither depends on a category: only on the backbone's weights, W (method, feature dim, k and
seed), the input size and the cells. They are exported with ``paddle.jit.save`` (and converted by
paddle2onnx for ONNX Runtime) into ``<cache>/<kind>-<key>-<format>/``, written to a temporary
folder and renamed, and reused by later categories, runs and ranks with the same key.

``embedder`` and ``scorer`` return the callables the pipeline uses, on any engine; the dygraph
engine runs the layer itself (the oracle, and the fallback when a graph cannot be built for
``--engine auto``, with the reason logged).
"""
import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile

import numpy as np
import paddle
from paddle.static import InputSpec

from models.orthoad import Embedder, GaussianScorer
from utils import UserError, ensure_dir

from . import engines

logger = logging.getLogger(__name__)

GRAPH_FORMAT = 1
ONNX_OPSET = 17


def _key(kind, detector):
    """What a run-time graph depends on (weights, W, input size, cells, k, Paddle), hashed."""
    h = hashlib.sha256()
    w = np.concatenate([detector.w1.numpy(), detector.w2.numpy(), detector.w3.numpy()])
    h.update(json.dumps({"kind": kind, "format": GRAPH_FORMAT, "paddle": paddle.__version__,
                         "weights": detector.backbone.weights_sha256,
                         "input": list(detector.input_hw), "cell": detector.cell,
                         "k": detector.k}).encode())
    h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()[:16]


def graph_layer(kind, detector):
    """(layer, input specs) of a graph kind: embed, score (Gaussian as inputs) or deploy
    (Gaussian inside)."""
    h, w = detector.input_hw
    image = InputSpec([None, 3, h, w], "float32", "image")
    if kind == "embed":
        return Embedder(detector), [image]
    if kind == "deploy":                                  # the Gaussian inside, as parameters
        return detector, [image]
    c, k = detector.n_cells, detector.k
    return GaussianScorer(detector), [image, InputSpec([c, k], "float32", "mean"),
                                      InputSpec([c, k, k], "float32", "precision")]


@contextlib.contextmanager
def _quiet():
    """paddle2onnx and Polygraphy print progress on stdout / stderr (also from C++)."""
    import io
    import sys
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        os.dup2(null.fileno(), 1)
        os.dup2(null.fileno(), 2)
        level = logging.root.manager.disable
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(level)
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def export_static(layer, specs, folder, name="model"):
    """``paddle.jit.save`` of ``layer`` into ``folder``; return (graph file, params file)."""
    layer.eval()
    static = paddle.jit.to_static(layer, input_spec=specs, full_graph=True)
    paddle.jit.save(static, os.path.join(folder, name))
    graph = next(os.path.join(folder, f) for f in os.listdir(folder)
                 if f in (f"{name}.json", f"{name}.pdmodel"))
    return graph, os.path.join(folder, f"{name}.pdiparams")


def to_onnx(graph, params, onnx_file):
    """Convert an exported Paddle graph with paddle2onnx (opset 17)."""
    engines.require("onnxruntime")
    import paddle2onnx
    try:
        with _quiet():
            paddle2onnx.export(graph, params, onnx_file, opset_version=ONNX_OPSET,
                               verbose=False)
    except Exception as exc:
        raise RuntimeError(f"paddle2onnx could not convert the graph ({type(exc).__name__}: "
                           f"{str(exc).strip()[:200]})") from None
    if not os.path.isfile(onnx_file):
        raise RuntimeError("paddle2onnx wrote no model")
    return onnx_file


def build(kind, detector, cache_dir, fmt="paddle"):
    """The folder of the ``kind`` graph of ``detector`` in ``fmt`` (paddle: model.json +
    model.pdiparams; onnx: model.onnx), built if missing.

    A folder is complete once it exists (built in a temporary folder, then renamed) and never
    changes: processes that build the same graph at once keep the first one renamed.
    """
    folder = os.path.join(ensure_dir(cache_dir), f"{kind}-{_key(kind, detector)}-{fmt}")
    if os.path.isdir(folder):
        return folder
    tmp = tempfile.mkdtemp(prefix=f".{kind}.", dir=cache_dir)
    try:
        layer, specs = graph_layer(kind, detector)
        if fmt == "onnx":
            work = os.path.join(tmp, "paddle")
            os.makedirs(work)
            to_onnx(*export_static(layer, specs, work), os.path.join(tmp, "model.onnx"))
            shutil.rmtree(work)
        else:
            export_static(layer, specs, tmp)
        try:
            os.rename(tmp, folder)
            logger.info("built the %s graph in %s", kind, folder)
        except OSError:
            if not os.path.isdir(folder):           # not a concurrent build of the same graph
                raise
        return folder
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _compiled(kind, detector, engine, cache_dir, threads):
    folder = build(kind, detector, cache_dir, "onnx" if engine == "onnxruntime" else "paddle")
    if engine == "onnxruntime":
        return engines.OnnxRuntimeGraph(os.path.join(folder, "model.onnx"), threads,
                                        use_gpu=engines.ort_gpu_available())
    graph = next(os.path.join(folder, f) for f in os.listdir(folder)
                 if f in ("model.json", "model.pdmodel"))
    return engines.PaddleInferenceGraph(graph, os.path.join(folder, "model.pdiparams"), threads,
                                        use_gpu=engines.gpu_available())


def _with_fallback(engine, requested, make_compiled, make_dygraph, what):
    if engine == "dygraph":
        return make_dygraph(), "dygraph"
    try:
        return make_compiled(), engine
    except (RuntimeError, UserError) as exc:
        if requested != "auto":
            raise UserError(f"--engine {engine} cannot run the {what} graph ({exc}): use "
                            "--engine dygraph") from None
        logger.warning("engine %s cannot run the %s graph (%s): falling back to dygraph",
                       engine, what, exc)
        return make_dygraph(), "dygraph"


def embedder(requested, detector, cache_dir, threads=None):
    """(fn(x [B, 3, H, W] float32 ndarray) -> y [B, h*w, k], engine used); y is an ndarray,
    or for dygraph a Tensor on the current device (the statistics can stay there)."""
    engine = engines.resolve(requested)

    def dygraph():
        def run(x):
            with paddle.no_grad():
                return detector.embed(paddle.to_tensor(x))
        return run

    def compiled():
        graph = _compiled("embed", detector, engine, cache_dir, threads)
        return lambda x: graph.run({"image": x})[0]
    return _with_fallback(engine, requested, compiled, dygraph, "embedding")


def scorer(requested, detector, mean, precision, cache_dir, threads=None):
    """(fn(x) -> (maps [B, H, W], scores [B]), engine used) under the Gaussian (mean,
    precision), which the compiled graphs receive as inputs without copies."""
    engine = engines.resolve(requested)

    def dygraph():
        def run(x):
            with paddle.no_grad():
                amap, score = detector(paddle.to_tensor(x))
            return amap.numpy()[:, 0], score.numpy()
        return run

    def compiled():
        graph = _compiled("score", detector, engine, cache_dir, threads)
        graph.share("mean", np.ascontiguousarray(mean, dtype=np.float32))
        graph.share("precision", np.ascontiguousarray(precision, dtype=np.float32))
        return lambda x: engines.map_and_score(graph.run({"image": x}))
    return _with_fallback(engine, requested, compiled, dygraph, "scoring")
