"""The detector as one object: load once, predict many. infer.py, predict.py, the HTTP service
and user code all call it.

    from orthoad_runtime import Detector
    detector = Detector.from_export("export/brick")
    for p in detector.predict(["a.png", "b.png"]):
        print(p.path, p.score, p.verdict, len(p.regions))

``Detector.from_export`` takes an export (a folder with deploy.json, or its ``model.onnx`` /
``model_int8.onnx`` / ``model.json`` / ``model.pdmodel``): ONNX Runtime or Paddle Inference,
the files' SHA-256 checked against deploy.json. An ONNX export needs no Paddle. In the
repository, ``pipeline.detectors.from_model_file`` builds the same object from a model file
(the backbone rebuilt from its weights, on any engine).

``predict`` takes image paths, PIL images, uint8 arrays (HxW, HxWx3, HxWx4), a list of them or
an NxHxWx3 array, in batches; it is thread-safe (the engine runs under a lock; decoding and
post-processing do not; the timing counters under their own). Its stages are public for
callers that batch across requests (the service): ``prepare`` (decode + pre-process),
``score`` (one engine run over prepared images) and ``finish`` (map back to the image, mask,
regions).
"""
import json
import logging
import os
import threading
import time
from dataclasses import dataclass

import numpy as np

from orthoad_runtime.ignore import apply_ignore, combine, load_ignore_mask, patch_mask
from orthoad_runtime.transforms import PREDICT_MAX_PIXELS, Preprocess, check_pixels, to_rgb
from .errors import ModelFileError
from .schema import check_deploy, decode_mask
from .errors import UserError
from .util import sha256_file

from .predictions import PATCHCORE_VERDICT_RULE, VERDICT_RULE, make_prediction, thresholds

logger = logging.getLogger(__name__)

GRAPH_NAMES = ("model.onnx", "model_int8.onnx", "model.json", "model.pdmodel")
MAX_DEPLOY_BYTES = 64 << 20


@dataclass
class Prepared:
    """An image ready for the engine: x float32 [3, H, W], its original (H0, W0), its path
    (or None) and, if kept, the uint8 network input for figures."""
    x: np.ndarray
    original_hw: tuple
    path: object = None
    input_image: np.ndarray = None


def _deploy_of(path, deploy_file=None):
    """(export folder, graph file, deploy.json path) of an export given as a folder or file."""
    if os.path.isdir(path):
        folder = path
        stats = deploy_file or os.path.join(folder, "deploy.json")
        named = _graph_named_in(stats)              # the graph deploy.json describes
        graph = os.path.join(folder, named) if named else next(
            (os.path.join(folder, n) for n in GRAPH_NAMES
             if os.path.isfile(os.path.join(folder, n))), None)
        if graph is None:
            raise UserError(f"'{path}' holds no exported graph ({', '.join(GRAPH_NAMES)}): "
                            "export one with export_model.py")
    else:
        folder, graph = os.path.dirname(os.path.abspath(path)), path
    stats = deploy_file or os.path.join(folder, "deploy.json")
    if os.path.isdir(stats):
        stats = os.path.join(stats, "deploy.json")
    return folder, graph, stats


def _graph_named_in(stats):
    """The graph_file deploy.json names, if it is one of ``GRAPH_NAMES`` (else None: the
    schema check of read_deploy reports the file)."""
    try:
        with open(stats, encoding="utf-8") as fh:
            name = json.load(fh).get("graph_file")
    except (OSError, ValueError, AttributeError, RecursionError):
        return None
    return name if name in GRAPH_NAMES else None


def read_deploy(graph, params=None, stats=None):
    """Check an export's files and read its deploy.json: every file the engine will load
    (graph, parameters, ONNX external data) must match its SHA-256 there. Returns (deploy dict,
    parameters file or None)."""
    from .util import is_pickle
    if not os.path.isfile(graph):
        raise UserError(f"the exported graph '{graph}' does not exist: run export_model.py "
                        "first")
    folder = os.path.dirname(os.path.abspath(graph))
    onnx = graph.lower().endswith(".onnx")
    params = params or (None if onnx else os.path.join(folder, "model.pdiparams"))
    if params and not os.path.isfile(params):
        raise UserError(f"the parameters file '{params}' does not exist: run export_model.py "
                        "first")
    stats = stats or os.path.join(folder, "deploy.json")
    if not os.path.isfile(stats):
        raise UserError(f"deploy file '{stats}' does not exist: pass the deploy.json that "
                        "export_model.py wrote")
    for what, path in (("graph", graph), ("parameters", params), ("deploy.json", stats)):
        if path and is_pickle(path):
            raise UserError(f"the {what} '{path}' is a Python pickle, which could run code when "
                            "loaded: pass the files that export_model.py writes")
    if os.path.getsize(stats) > MAX_DEPLOY_BYTES:
        raise UserError(f"'{stats}' is {os.path.getsize(stats)} bytes, far more than a "
                        "deploy.json of export_model.py: pass the deploy.json of the export")
    try:
        with open(stats, encoding="utf-8") as fh:
            deploy = json.load(fh)
    except (OSError, ValueError, RecursionError) as exc:
        raise UserError(f"'{stats}' is not a deploy.json of export_model.py "
                        f"({type(exc).__name__}): export the model again") from None
    check_deploy(stats, deploy)
    if onnx != (deploy["format"] == "onnx"):
        raise UserError(f"'{stats}' describes a {deploy['format']} export, not '{graph}': "
                        "pass the deploy.json exported with it")
    if onnx:
        if params:
            raise UserError(f"an ONNX model takes no --params_file, and '{params}' belongs to "
                            "another export: leave it out")
        checks = [(graph, deploy["graph_sha256"])]
        if deploy.get("data_file"):          # a plain file name beside the graph (schema)
            checks.append((os.path.join(folder, deploy["data_file"]), deploy["data_sha256"]))
    else:
        checks = [(graph, deploy["graph_sha256"]), (params, deploy["params_sha256"])]
    for path, digest in checks:                        # every file the engine will load
        if not os.path.isfile(path) or sha256_file(path) != digest:
            raise UserError(f"'{stats}' does not belong to '{path}' (SHA-256 differs): use the "
                            "deploy.json exported with these files")
    return deploy, params


def _export_runner(graph, model):
    """run(x, ignore) -> (maps, scores) of an exported graph; PatchCore's graph also takes the
    patches that count for its image score (``patch_mask`` of the ignore mask)."""
    from .engines import map_and_score
    if model.get("method") != "patchcore":
        return lambda x, ignore=None: map_and_score(graph.run({"image": x}))
    grid = tuple(model["grid"])
    everything = np.ones(grid[0] * grid[1], np.float32)

    def run(x, ignore=None):
        scored = patch_mask(ignore, grid)
        return map_and_score(graph.run({"image": x, "scored": everything if scored is None
                                        else scored}))
    return run


class Detector:
    """A loaded model with its engine; see the module docstring. Build with ``load``.

    Attributes:
        category: the model's category; engine: what runs the graph; preprocess: its input
        geometry; thresholds: (image, pixel) or None each; ignore: bool [H, W] or None;
        meta: the model's metadata; source: the file(s) it was loaded from, with SHA-256.
    """

    def __init__(self, run, preprocess, meta, engine, thresholds, ignore, display, source,
                 batch_size=8):
        self._run, self.preprocess, self.meta, self.engine = run, preprocess, meta, engine
        self.thresholds, self.ignore, self.display = thresholds, ignore, display
        self.source, self.batch_size = source, batch_size
        self.max_pixels = PREDICT_MAX_PIXELS        # images above it refused (header only)
        self.loaded_at = time.time()
        self._lock = threading.Lock()
        self._timing_lock = threading.Lock()
        self.timings = {"prepare_s": 0.0, "score_s": 0.0, "finish_s": 0.0, "images": 0}
        thr = meta.get("threshold") or {}
        self.threshold_source = thr.get("source") if thresholds[0] is not None else None
        # PatchCore's image score is its graph's (the paper's Eq. 7), not the map's peak
        self.score_from_map = meta.get("method") != "patchcore"

    # ------------------------------------------------------------------ loading

    @property
    def precision(self):
        return self.meta.get("precision", "fp32")

    @classmethod
    def from_export(cls, path, threads=None, use_gpu=False, mkldnn=None, params_file=None,
                    deploy_file=None, batch_size=8, max_pixels=PREDICT_MAX_PIXELS):
        """An export: a folder, or its graph file (model.onnx, model_int8.onnx, model.json or
        model.pdmodel) with deploy.json beside it or given.

        Args:
            threads: engine threads (default: every CPU). use_gpu: on GPU 0.
            mkldnn: Paddle Inference's oneDNN kernels (default on; a Paddle graph only: an
                error for an ONNX export, where it does not apply).
            params_file: model.pdiparams of a Paddle graph (default: beside it; an error for
                an ONNX export). deploy_file: deploy.json (default: beside the graph).
            batch_size: images per engine run in ``predict``.
            max_pixels: images above it are refused from their header.
        """
        from .engines import OnnxRuntimeGraph, PaddleInferenceGraph
        if not os.path.exists(path):
            raise UserError(f"'{path}' does not exist: give an export folder (export_model.py) "
                            "or its model.onnx / model.json")
        if not (os.path.isdir(path) or path.lower().endswith(GRAPH_NAMES)):
            from .util import is_pickle
            if is_pickle(path):
                raise UserError(f"'{path}' is a Python pickle, which could run code when "
                                "loaded: pass the export's files (export_model.py)")
            raise UserError(f"'{path}' is not an export (a folder with deploy.json, or its "
                            f"{' / '.join(GRAPH_NAMES)}): a model file (.safetensors) needs the "
                            "repository (pipeline.detectors.from_model_file), or export it "
                            "with export_model.py")
        _, graph_file, stats = _deploy_of(path, deploy_file)
        deploy, params = read_deploy(graph_file, params_file, stats)
        pre = Preprocess.from_config(deploy["preprocess"])
        if deploy["format"] == "onnx":
            if params_file is not None or mkldnn is not None:
                raise UserError(f"'{graph_file}' is an ONNX export: params_file and mkldnn "
                                "belong to Paddle graphs; leave them out")
            graph, engine = OnnxRuntimeGraph(graph_file, threads, use_gpu), "onnxruntime"
        else:
            graph = PaddleInferenceGraph(graph_file, params, threads,
                                         True if mkldnn is None else mkldnn, use_gpu)
            engine = "inference"
        ignore = decode_mask(deploy["ignore_mask"]) if deploy.get("ignore_mask") else None
        meta = dict(deploy["model"], threshold=deploy.get("threshold"),
                    display=deploy.get("display"), precision=deploy.get("precision", "fp32"))
        if deploy.get("precision") == "int8":
            engine = "onnxruntime int8"
        source = {"kind": "export", "format": deploy["format"], "graph": graph_file,
                  "deploy": stats, "sha256": deploy["graph_sha256"]}
        d = cls(_export_runner(graph, deploy["model"]), pre, meta, engine, thresholds(deploy),
                ignore, deploy.get("display"), source, batch_size)
        d.max_pixels = max_pixels
        return d

    # ------------------------------------------------------------------ properties

    @property
    def category(self):
        return self.meta.get("category")

    def with_threshold(self, value):
        """Use ``value`` as both the image and the pixel threshold (predict.py --threshold)."""
        self.thresholds = (float(value), float(value))
        self.threshold_source = "given"
        return self

    def info(self):
        """What the service's /models shows of this detector."""
        h, w = self.preprocess.input_hw
        return {"category": self.category, "engine": self.engine, "precision": self.precision,
                "input_size": [h, w], "geometry": self.preprocess.mode,
                "image_threshold": self.thresholds[0], "pixel_threshold": self.thresholds[1],
                "threshold_source": self.threshold_source, "source": self.source,
                "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self.loaded_at)),
                "ignore_mask": self.ignore is not None}

    def ignore_mask(self, mask):
        """An ignore mask (file path or bool array at the input's or the images' size) combined
        with the model's own."""
        if mask is None:
            return self.ignore
        if isinstance(mask, (str, os.PathLike)):
            extra = load_ignore_mask(os.fspath(mask), self.preprocess)
        else:
            m = np.asarray(mask).astype(bool)
            extra = m if m.shape == self.preprocess.input_hw else \
                self.preprocess.mask(m.astype(np.uint8) * 255)
        return combine(self.ignore, extra)

    # ------------------------------------------------------------------ the three stages

    def _timed(self, key, seconds, images=0):
        with self._timing_lock:
            self.timings[key] += seconds
            self.timings["images"] += images

    def prepare(self, image, keep_input=False):
        """An image (path, PIL image, array) -> ``Prepared``; an image file above
        ``max_pixels`` is refused from its header (``TooManyPixels``), before decoding."""
        t = time.perf_counter()
        if isinstance(image, (str, os.PathLike)):
            x, hw = self.preprocess.load(image, max_pixels=self.max_pixels)
        else:
            rgb = to_rgb(image)
            check_pixels(rgb.shape[1], rgb.shape[0], "the image", self.max_pixels)
            x, hw = self.preprocess.image(rgb), rgb.shape[:2]
        p = Prepared(x, hw, os.fspath(image) if isinstance(image, (str, os.PathLike))
                     else None, self.preprocess.unnormalise(x) if keep_input else None)
        self._timed("prepare_s", time.perf_counter() - t)
        return p

    def prepare_bytes(self, data, keep_input=False):
        """Encoded image bytes (an upload) -> ``Prepared``; UserError if they are no image or
        above ``max_pixels`` (read from the header, before decoding)."""
        t = time.perf_counter()
        x, hw = self.preprocess.load(data, "the uploaded image", self.max_pixels)
        p = Prepared(x, hw, None, self.preprocess.unnormalise(x) if keep_input else None)
        self._timed("prepare_s", time.perf_counter() - t)
        return p

    def score(self, prepared, ignore=None):
        """One engine run over prepared images -> (maps [B, H, W] with NaN on ignored pixels,
        scores [B]: the max of the rest, or PatchCore's over its scored patches). ``ignore``:
        default the model's own mask."""
        ignore = self.ignore if ignore is None else ignore
        x = np.stack([p.x for p in prepared])
        t = time.perf_counter()
        with self._lock:                              # engines are not all thread-safe
            maps, scores = self._run(x, ignore)
        self._timed("score_s", time.perf_counter() - t, len(prepared))
        return apply_ignore(maps, ignore, None if self.score_from_map else scores)

    def finish(self, prepared, amap, score, ignore=None):
        """The ``Prediction`` of one prepared image from its map and score."""
        ignore = self.ignore if ignore is None else ignore
        t = time.perf_counter()
        out = make_prediction(self.preprocess, amap, score, prepared.original_hw,
                              self.thresholds, ignore, prepared.path, self.threshold_source,
                              prepared.input_image,
                              VERDICT_RULE if self.score_from_map else PATCHCORE_VERDICT_RULE)
        self._timed("finish_s", time.perf_counter() - t)
        return out

    # ------------------------------------------------------------------ predict

    def predict_iter(self, images, ignore_mask=None, batch_size=None, keep_input=False,
                     on_prepared=None):
        """Yield a ``Prediction`` per image, in order, scored in batches (decoding runs ahead in
        threads). ``on_prepared(prepared)`` is called on each image before it is scored."""
        from .prefetch import prefetch_batches
        ignore = self.ignore_mask(ignore_mask)
        items = list(images) if not isinstance(images, list) else images
        size = batch_size or self.batch_size
        for batch in prefetch_batches(items, lambda im: self.prepare(im, keep_input), size):
            if on_prepared:
                for p in batch:
                    on_prepared(p)
            maps, scores = self.score(batch, ignore)
            for p, amap, s in zip(batch, maps, scores):
                yield self.finish(p, amap, float(s), ignore)

    def predict(self, images, ignore_mask=None, batch_size=None, keep_input=False):
        """``Prediction``s: one for one image (a path, a PIL image, an HxW or HxWxC array), a
        list for a list (or tuple) of them or for an NxHxWx3 array (N images)."""
        if isinstance(images, np.ndarray) and (images.ndim == 4 or (
                images.ndim == 3 and images.shape[-1] not in (3, 4))):
            images = list(images)                      # N images (colour, or N grey HxW)
        one = not isinstance(images, (list, tuple))
        out = list(self.predict_iter([images] if one else list(images), ignore_mask,
                                     batch_size, keep_input))
        return out[0] if one else out


__all__ = ["Detector", "Prepared", "ModelFileError"]
