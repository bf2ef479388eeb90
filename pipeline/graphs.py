"""Static graphs of a model for the compiled engines, built once per run and cached.

Two run-time graphs:

* ``embed``: image [B, 3, H, W] -> embeddings [B, h*w, k] (backbone + projection): the fit.
* ``score``: (image, mean [C, k], precision [C, k, k]) -> (map [B, 1, H, W], score [B]): the
  whole scoring graph with the Gaussian as INPUTS, so one graph serves every category of a run.
  PatchCore's: (image, bank [M, D], scored [h*w]) -> (map, score), the bank as an input.

Neither depends on a category: only on the backbone's weights, W (method, feature dim, k and
seed), the input size and the cells (PatchCore: D and b), and on the tools that made them
(Paddle, and for ONNX paddle2onnx, onnx, ONNX Runtime and the opset). They are exported with ``paddle.jit.save`` (and
converted by paddle2onnx for ONNX Runtime) into ``<cache>/<kind>-<key>-<format>/`` with a
``manifest.json`` of the files' SHA-256, written to a temporary folder and renamed, and reused by
later categories, runs, run folders and ranks with the same key. The cache is the user's
(``default_cache``: ``$ORTHOAD_CACHE``, else ``$XDG_CACHE_HOME/orthoad-paddle/graphs``, else
``~/.cache/orthoad-paddle/graphs``), so a new run folder converts nothing again. A folder whose
manifest is missing or whose files do not match it (a killed build, a damaged disk) is rebuilt,
with the reason logged.

``embedder`` and ``scorer`` return the callables the pipeline uses, on any engine; the dygraph
engine runs the layer itself (the oracle, and the fallback, with the reason logged, when a graph
cannot be built or fails at run time under ``--engine auto``; an explicit engine that fails is a
one-line error).
"""
import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time

import numpy as np
import paddle
from paddle.static import InputSpec

from models.orthoad import Embedder
from utils import UserError, ensure_dir, sha256_file, write_json

from orthoad_runtime import engines

logger = logging.getLogger(__name__)

GRAPH_FORMAT = 2
ONNX_OPSET = 17
MANIFEST = "manifest.json"
STALE_SECONDS = 3600          # temporary build folders older than this were left by a killed run


class CacheError(UserError):
    """The graph cache cannot be written (a full disk, no permission)."""


def default_cache():
    """The user's graph cache folder (``$ORTHOAD_CACHE`` overrides it)."""
    if os.environ.get("ORTHOAD_CACHE"):
        return os.environ["ORTHOAD_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "orthoad-paddle", "graphs")


def tool_versions(fmt):
    """Versions of everything that makes a graph of format ``fmt`` (part of its key)."""
    versions = {"paddle": paddle.__version__}
    if fmt == "onnx":
        import importlib.metadata as md
        for name in ("paddle2onnx", "onnx", "onnxruntime"):
            try:
                versions[name] = md.version(name)
            except md.PackageNotFoundError:
                versions[name] = None
        versions["opset"] = ONNX_OPSET
    return versions


def _key(kind, detector, fmt="paddle"):
    """What a run-time graph depends on (weights, the detector's own facts: W, input size,
    cells, k for OrthoAD / PaDiM, D and b for PatchCore; the tools and their versions),
    hashed."""
    facts, data = detector.graph_key()
    h = hashlib.sha256()
    h.update(json.dumps(dict(facts, kind=kind, format=GRAPH_FORMAT, tools=tool_versions(fmt),
                             weights=detector.backbone.weights_sha256),
                        sort_keys=True).encode())
    h.update(data)
    return h.hexdigest()[:16]


def graph_layer(kind, detector):
    """(layer, input specs) of a graph kind: embed (image -> features), score (the statistics
    as inputs: Gaussian or bank), head (the score graph after the backbone) or deploy (the
    statistics inside); see the detectors' ``graph``."""
    if kind == "embed":
        h, w = detector.input_hw
        return Embedder(detector), [InputSpec([None, 3, h, w], "float32", "image")]
    return detector.graph(kind)


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
    """``paddle.jit.save`` of ``layer`` into ``folder``, read back to verify it; return (graph
    file, params file).

    Paddle 3.3.1's ``jit.save`` does not report a full disk: it leaves a truncated
    ``.pdiparams`` behind (seen here on a 3 MB tmpfs: 3.0 of 11.2 MB written, no error). The
    files are therefore loaded back, and a failure is an OSError (ENOSPC when the disk is full).
    """
    layer.eval()
    static = paddle.jit.to_static(layer, input_spec=specs, full_graph=True)
    prefix = os.path.join(folder, name)
    paddle.jit.save(static, prefix)
    try:
        graph = next(os.path.join(folder, f) for f in os.listdir(folder)
                     if f in (f"{name}.json", f"{name}.pdmodel"))
        with _quiet():
            paddle.jit.load(prefix)
    except Exception as exc:  # noqa: BLE001 - whatever Paddle raises for an unreadable save
        code = errno.ENOSPC if shutil.disk_usage(folder).free < (16 << 20) else errno.EIO
        raise OSError(code, f"{os.strerror(code)}: the graph saved in '{folder}' cannot be read "
                            f"back ({str(exc).strip().splitlines()[0][:100]})") from None
    return graph, prefix + ".pdiparams"


def to_onnx(graph, params, onnx_file):
    """Convert an exported Paddle graph with paddle2onnx (opset 17)."""
    engines.require("onnxruntime")
    import paddle2onnx
    try:
        with _quiet():
            paddle2onnx.export(graph, params, onnx_file, opset_version=ONNX_OPSET,
                               verbose=False)
    except OSError:
        raise                                           # a full disk stays an OSError
    except Exception as exc:
        raise RuntimeError(f"paddle2onnx could not convert the graph ({type(exc).__name__}: "
                           f"{str(exc).strip()[:200]})") from None
    if not os.path.isfile(onnx_file):
        raise RuntimeError("paddle2onnx wrote no model")
    return onnx_file


def _problem(folder):
    """Why a cached graph folder cannot be used (None if its files match its manifest)."""
    path = os.path.join(folder, MANIFEST)
    try:
        with open(path, encoding="utf-8") as fh:
            files = json.load(fh)["files"]
        if not isinstance(files, dict) or not files:
            return "its manifest lists no files"
    except (OSError, ValueError, KeyError, TypeError):
        return "it has no readable manifest (an interrupted build?)"
    for name, digest in files.items():
        f = os.path.join(folder, os.path.basename(name))
        if not os.path.isfile(f):
            return f"{name} is missing"
        if sha256_file(f) != digest:
            return f"{name} does not match its SHA-256 in the manifest"
    return None


def _clean_stale(cache_dir):
    """Remove temporary build folders that a killed process left behind."""
    now = time.time()
    for d in os.listdir(cache_dir):
        p = os.path.join(cache_dir, d)
        if d.startswith(".") and os.path.isdir(p):
            try:
                if now - os.path.getmtime(p) > STALE_SECONDS:
                    shutil.rmtree(p, ignore_errors=True)
            except OSError:
                pass


def build(kind, detector, cache_dir, fmt="paddle"):
    """The folder of the ``kind`` graph of ``detector`` in ``fmt`` (paddle: model.json +
    model.pdiparams; onnx: model.onnx), built if missing or broken (see ``_cached``)."""
    def make(tmp):
        layer, specs = graph_layer(kind, detector)
        if fmt == "onnx":
            work = os.path.join(tmp, "paddle")
            os.makedirs(work)
            to_onnx(*export_static(layer, specs, work), os.path.join(tmp, "model.onnx"))
            shutil.rmtree(work)
        else:
            export_static(layer, specs, tmp)
    return _cached(cache_dir, kind, f"{kind}-{_key(kind, detector, fmt)}-{fmt}", fmt, make)


def _cached(cache_dir, kind, name, fmt, make):
    """The cache folder ``name``, made by ``make(tmp_folder)`` if missing or broken.

    Built in a temporary folder with a manifest of its files' SHA-256, then renamed; checked
    against the manifest at every use. Processes that build the same graph at once keep the
    first one renamed. A write failure is a CacheError (the run falls back under auto).
    """
    cache_dir = ensure_dir(cache_dir)
    folder = os.path.join(cache_dir, name)
    if os.path.isdir(folder):
        why = _problem(folder)
        if why is None:
            return folder
        logger.warning("the cached %s graph %s is unusable (%s): building it again", kind,
                       folder, why)
        trash = tempfile.mkdtemp(prefix=f".broken.{kind}.", dir=cache_dir)
        try:
            os.rename(folder, os.path.join(trash, "old"))
        except OSError:
            pass                                   # another process moved it first
        shutil.rmtree(trash, ignore_errors=True)
    _clean_stale(cache_dir)
    tmp = tempfile.mkdtemp(prefix=f".{kind}.", dir=cache_dir)
    try:
        make(tmp)
        write_json(os.path.join(tmp, MANIFEST), {
            "kind": kind, "format": fmt, "tools": tool_versions(fmt),
            "files": {f: sha256_file(os.path.join(tmp, f)) for f in sorted(os.listdir(tmp))}})
        try:
            os.rename(tmp, folder)
            logger.info("built the %s graph in %s", kind, folder)
        except OSError:
            if not os.path.isdir(folder) or _problem(folder):   # not a concurrent build
                raise
        return folder
    except OSError as exc:
        raise CacheError(f"cannot write the {kind} graph to the cache '{cache_dir}' "
                         f"({exc.strerror or exc}): free space there or set ORTHOAD_CACHE to "
                         "another folder") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ranges_key(ranges):
    return hashlib.sha256(json.dumps(ranges, sort_keys=True).encode()).hexdigest()[:12]


def build_int8(detector, cache_dir, int8):
    """The folder of the int8 embedding graph (``pipeline.quantize``) of ``detector`` with the
    model's int8 record (its calibration ``ranges`` and the ``fp32_nodes`` kept in float32),
    built from the float32 one if missing or broken."""
    from pipeline.quantize import quantize_graph
    ranges, keep = int8["ranges"], list(int8.get("fp32_nodes") or [])
    src = os.path.join(build("embed", detector, cache_dir, "onnx"), "model.onnx")
    key = ranges_key({"ranges": ranges, "fp32_nodes": keep} if keep else ranges)
    return _cached(cache_dir, "embed8", f"embed8-{_key('embed', detector, 'onnx')}-{key}-onnx",
                   "onnx", lambda tmp: quantize_graph(src, ranges, os.path.join(tmp, "model.onnx"),
                                                      keep))


def int8_engine(requested):
    if requested not in ("auto", "onnxruntime"):
        raise UserError(f"--precision int8 runs on ONNX Runtime, not --engine {requested}: use "
                        "--engine onnxruntime (or auto)")
    engines.require("onnxruntime")
    return "onnxruntime"


def _compiled(kind, detector, engine, cache_dir, threads):
    folder = build(kind, detector, cache_dir, "onnx" if engine == "onnxruntime" else "paddle")
    if engine == "onnxruntime":
        return engines.OnnxRuntimeGraph(os.path.join(folder, "model.onnx"), threads,
                                        use_gpu=engines.ort_gpu_available())
    graph = next(os.path.join(folder, f) for f in os.listdir(folder)
                 if f in ("model.json", "model.pdmodel"))
    return engines.PaddleInferenceGraph(graph, os.path.join(folder, "model.pdiparams"), threads,
                                        use_gpu=engines.gpu_available())


class _Guarded:
    """A compiled graph's callable that, if it fails at run time, falls back to dygraph (with
    the reason logged) under ``--engine auto``, and is a one-line error otherwise."""

    def __init__(self, fn, engine, requested, make_dygraph, what):
        self.fn, self.engine, self.requested = fn, engine, requested
        self.make_dygraph, self.what = make_dygraph, what

    def __call__(self, *args):
        try:
            return self.fn(*args)
        except Exception as exc:  # noqa: BLE001 - any engine failure: fall back or explain
            why = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:160]}" \
                if str(exc).strip() else type(exc).__name__
            if self.requested != "auto":
                if isinstance(exc, UserError):
                    raise
                raise UserError(f"--engine {self.engine} failed while running the {self.what} "
                                f"graph ({why}): use --engine dygraph (or auto)") from None
            logger.warning("engine %s failed while running the %s graph (%s): falling back to "
                           "dygraph for the rest of the run", self.engine, self.what, why)
            self.fn, self.engine = self.make_dygraph(), "dygraph"
            return self.fn(*args)


def _with_fallback(engine, requested, make_compiled, make_dygraph, what):
    if engine == "dygraph":
        return make_dygraph(), "dygraph"
    try:
        fn = make_compiled()
    except (RuntimeError, UserError) as exc:
        if requested != "auto":
            if isinstance(exc, CacheError):
                raise
            raise UserError(f"--engine {engine} cannot run the {what} graph ({exc}): use "
                            "--engine dygraph") from None
        logger.warning("engine %s cannot run the %s graph (%s): falling back to dygraph",
                       engine, what, exc)
        return make_dygraph(), "dygraph"
    return _Guarded(fn, engine, requested, make_dygraph, what), engine


def embedder(requested, detector, cache_dir=None, threads=None, int8=None):
    """(fn(x [B, 3, H, W] float32 ndarray) -> y [B, h*w, k], engine used); y is an ndarray,
    or for dygraph a Tensor on the current device (the statistics can stay there). Graphs are
    cached in ``cache_dir`` (default: the user's cache, ``default_cache``). ``int8``: the
    int8 record of an int8 backbone ({ranges, fp32_nodes}; ONNX Runtime only, never a silent
    fallback)."""
    cache_dir = cache_dir or default_cache()
    if int8 is not None:
        int8_engine(requested)
        graph = engines.OnnxRuntimeGraph(os.path.join(build_int8(detector, cache_dir, int8),
                                                      "model.onnx"), threads)
        return (lambda x: graph.run({"image": x})[0]), "onnxruntime int8"
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


def scorer(requested, detector, stats, cache_dir=None, threads=None, int8=None):
    """(fn(x, scored=None) -> (maps [B, H, W], scores [B]), engine used) under the statistics
    ``stats`` ({mean, precision} of a Gaussian, {bank} of PatchCore: the detector's own), which
    the compiled graphs receive as inputs without copies (dygraph runs the layer with them
    installed). ``scored``: float32 [h*w] of the patches that count for PatchCore's image
    score (``orthoad_runtime.ignore.patch_mask``; default all); the Gaussian graphs take none.
    ``int8``: the int8 record of an int8 backbone: the int8 embedding graph, then the float32
    head."""
    cache_dir = cache_dir or default_cache()
    stats = {name: np.ascontiguousarray(stats[name], dtype=np.float32)
             for name in detector.stat_names}
    takes_scored = not detector.score_from_map
    all_scored = np.ones(detector.n_positions, np.float32)

    def feeds(x, scored, first="image"):
        out = {first: x}
        if takes_scored:
            out["scored"] = all_scored if scored is None else scored
        return out

    if int8 is not None:
        embed, _ = embedder(requested, detector, cache_dir, threads, int8)
        head = engines.OnnxRuntimeGraph(os.path.join(build("head", detector, cache_dir, "onnx"),
                                                     "model.onnx"), threads)
        for name, array in stats.items():
            head.share(name, array)
        return (lambda x, scored=None: engines.map_and_score(
            head.run(feeds(embed(x), scored, "y")))), "onnxruntime int8"
    engine = engines.resolve(requested)

    def dygraph():                         # the layer itself, with its own statistics
        def run(x, scored=None):
            with paddle.no_grad():
                x = paddle.to_tensor(x)
                amap, score = detector(x, paddle.to_tensor(
                    all_scored if scored is None else scored)) if takes_scored else detector(x)
            return amap.numpy()[:, 0], score.numpy()
        return run

    def compiled():
        graph = _compiled("score", detector, engine, cache_dir, threads)
        for name, array in stats.items():
            graph.share(name, array)
        return lambda x, scored=None: engines.map_and_score(graph.run(feeds(x, scored)))
    return _with_fallback(engine, requested, compiled, dygraph, "scoring")
