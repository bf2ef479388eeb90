"""The inspection service's core, apart from HTTP (``orthoad_runtime/app.py``): the detectors of a folder
with their hot reload, the micro-batcher in front of them, the limits, and the metrics.

* ``Registry``: every model of a run folder (``<category>.safetensors``) or of a folder of exports
  (``<category>/deploy.json`` + graph), loaded once at start; a model that fails its checks is
  reported (``failures``) and the others serve. The files are watched: a model replaced on disk
  (``train.py --update``, a new calibration, a new export) is loaded beside the old one and
  swapped in one assignment; requests already holding the old detector finish with it.
* ``Batcher``: requests are decoded and pre-processed in a thread pool, queued, and scored in
  batches of up to ``max_batch`` by one scoring thread: a batch is whatever queued while the
  previous one ran, plus up to ``max_wait_ms`` for requests still being decoded. Admission
  counts requests (``max_queue``) AND memory (``memory_budget_bytes``): every request holds a
  ``Reservation`` of the bytes of its body as they arrive, then ``BYTES_PER_PIXEL`` for each
  pixel of its image (the decoded copy, the original-size map, mask and regions' labels);
  beyond either limit the answer is 503 with Retry-After. An image above ``max_pixels`` is
  refused (413) from its header, before anything is decoded. So the uploads' and images'
  memory stays within the budget whatever the clients send (the models and the threads' own
  memory come on top).
* ``Metrics``: Prometheus counters, histograms and gauges (prometheus_client).
"""
import asyncio
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from orthoad_runtime.transforms import CAMERA_FRAME
from .errors import UserError

logger = logging.getLogger(__name__)


BYTES_PER_PIXEL = 24              # peak bytes a request holds per pixel of its image (measured)


def default_max_pixels(memory_budget_bytes, max_queue):
    """The largest image such that ``max_queue`` of them fit the memory budget, but never
    less than a 4096 x 3072 camera frame."""
    return max(CAMERA_FRAME, int(memory_budget_bytes // (max_queue * BYTES_PER_PIXEL)))


@dataclass
class Limits:
    """The service's limits, in one place."""
    max_batch: int = 16            # images per engine run
    max_wait_ms: float = 3.0       # wait for requests being decoded, when some are
    max_queue: int = 64            # requests admitted at once (decoding, queued or scoring)
    max_body_bytes: int = 32 << 20  # an image upload
    memory_budget_bytes: int = 1 << 30   # decoded images in flight (BYTES_PER_PIXEL each px)
    max_pixels: int = CAMERA_FRAME  # larger images: 413 from the header
    read_timeout_s: float = 10.0   # a body not received within it: 408
    decode_threads: int = 2
    reload_interval_s: float = 2.0  # how often model files are checked for changes
    retry_after_s: int = 1


def discover(model_dir, model_files=True):
    """{category: source path} of the models in ``model_dir``: ``<category>.safetensors`` files
    (with ``model_files``: the repository's serve.py), export folders ``<category>/`` (with
    deploy.json), or ``model_dir`` itself as one export. Categories are the files' and folders'
    names (never values read from them)."""
    if not os.path.isdir(model_dir):
        raise UserError(f"--model_dir '{model_dir}' is not a folder: give a run folder "
                        "(output/<method>_<arch>_k<k>) or a folder of exports")
    if os.path.isfile(os.path.join(model_dir, "deploy.json")):
        return {os.path.basename(os.path.normpath(os.path.abspath(model_dir))): model_dir}
    found = {}
    for name in sorted(os.listdir(model_dir)):
        path = os.path.join(model_dir, name)
        if name.endswith(".safetensors") and os.path.isfile(path):
            found[name[:-len(".safetensors")]] = path
        elif os.path.isfile(os.path.join(path, "deploy.json")):
            found[name] = path
    if not found:
        raise UserError(f"no model in '{model_dir}': expected <category>.safetensors files "
                        "(train.py) or export folders with deploy.json (export_model.py)")
    files = sorted(c for c, p in found.items() if p.endswith(".safetensors"))
    if files and not model_files:
        raise UserError(f"'{model_dir}' holds model files ({', '.join(files[:3])}"
                        f"{' ...' if len(files) > 3 else ''}.safetensors), which need Paddle and "
                        "the repository: export them (export_model.py --format onnx) and serve "
                        "the exports, or run the repository's serve.py")
    return found


def _signature(path):
    """What changes when a model's files are replaced (size, mtime, inode of each)."""
    files = [path] if os.path.isfile(path) else [
        os.path.join(path, f) for f in sorted(os.listdir(path))
        if f in ("deploy.json", "model.onnx", "model.onnx.data", "model.json",
                 "model.pdmodel", "model.pdiparams")] if os.path.isdir(path) else []
    out = []
    for f in files:
        try:
            st = os.stat(f)
            out.append((f, st.st_size, st.st_mtime_ns, st.st_ino))
        except OSError:
            out.append((f, None, None, None))
    return tuple(out)


class Registry:
    """The detectors of ``model_dir`` (see the module docstring)."""

    def __init__(self, model_dir, load, metrics=None, show_paths=False, model_files=True):
        self.model_dir, self._load, self.metrics = model_dir, load, metrics
        self.show_paths = show_paths
        self.sources = discover(model_dir, model_files)
        self.detectors, self.failures, self._signatures = {}, {}, {}
        self.ready = False
        self._stop = threading.Event()

    def load_all(self):
        for category, path in self.sources.items():
            self._try_load(category, path)
        self.ready = True
        logger.info("serving %d model(s): %s%s", len(self.detectors),
                    ", ".join(sorted(self.detectors)) or "none",
                    f"; {len(self.failures)} failed: " + ", ".join(
                        f"{c} ({m})" for c, m in self.failures.items()) if self.failures else "")
        return self

    def _try_load(self, category, path):
        sig = _signature(path)
        t = time.perf_counter()
        try:
            detector = self._load(path)
        except UserError as exc:
            self.failures[category] = str(exc)
            self._signatures[category] = sig
            logger.error("model %s (%s) not loaded: %s", category, path, exc)
            return False
        self.detectors[category] = detector          # one assignment: the swap
        self.failures.pop(category, None)
        self._signatures[category] = sig
        if self.metrics:
            self.metrics.loads.labels(category).inc()
        logger.info("model %s loaded from %s in %.2f s (%s)", category, path,
                    time.perf_counter() - t, detector.engine)
        return True

    def get(self, category):
        """The category's current detector; KeyError (unknown) or LookupError (failed)."""
        if category in self.detectors:
            return self.detectors[category]
        if category in self.failures:
            raise LookupError(self.failures[category])
        raise KeyError(category)

    def check_for_changes(self):
        """Reload every model whose files changed since it was loaded; return the categories
        reloaded."""
        changed = []
        for category, path in self.sources.items():
            sig = _signature(path)
            if sig != self._signatures.get(category) and all(s[1] is not None for s in sig):
                logger.info("model %s changed on disk: loading it beside the old one", category)
                if self._try_load(category, path):
                    changed.append(category)
        return changed

    def watch(self, interval):
        """Check for changed files every ``interval`` seconds until ``stop``."""
        def loop():
            while not self._stop.wait(interval):
                try:
                    self.check_for_changes()
                except Exception:  # noqa: BLE001 - never let the watcher die
                    logger.exception("checking the model files failed")
        thread = threading.Thread(target=loop, name="model-watch", daemon=True)
        thread.start()
        return thread

    def stop(self):
        self._stop.set()

    def info(self):
        """What /models shows: per model its category, engine, geometry, thresholds, file
        names and SHA-256 (absolute paths only with ``show_paths``)."""
        out = {"models": {c: self._private(d.info()) for c, d in sorted(self.detectors.items())},
               "failed": {c: self._hide(m) for c, m in sorted(self.failures.items())},
               "ready": self.ready}
        if self.show_paths:
            out["model_dir"] = os.path.abspath(self.model_dir)
        return out

    def _hide(self, text):
        if self.show_paths:
            return text
        for folder in {os.path.abspath(self.model_dir), os.path.normpath(self.model_dir)}:
            text = text.replace(folder + os.sep, "").replace(folder, ".")
        return text

    def _private(self, info):
        if self.show_paths:
            return info
        src = info.get("source") or {}
        names = {k: os.path.basename(v) for k, v in src.items()
                 if k in ("path", "graph", "deploy") and isinstance(v, str)}
        return dict(info, source=dict({k: v for k, v in src.items()
                                       if k not in ("path", "graph", "deploy")}, **names))


class Reservation:
    """Bytes one request holds of the batcher's memory budget (its body as it arrives, then
    its image); all released by ``close``."""

    def __init__(self, batcher):
        self.batcher, self.bytes = batcher, 0

    def add(self, n):
        """Hold ``n`` more bytes; QueueFull('memory') if the budget has no room (a request
        that holds nothing yet is always let in, so that one image at the size limit passes)."""
        b = self.batcher
        if n > 0 and b.reserved + n > b.limits.memory_budget_bytes and b.reserved > self.bytes:
            raise QueueFull("memory")
        b.reserved += n
        self.bytes += n
        b._gauge()

    def close(self):
        self.batcher.reserved -= self.bytes
        self.bytes = 0
        self.batcher._gauge()


class QueueFull(Exception):
    """More requests than ``Limits.max_queue`` are admitted, or their images' memory would
    pass ``Limits.memory_budget_bytes``: answer 503 with Retry-After."""


@dataclass
class _Job:
    detector: object
    prepared: object
    ignore: object
    future: object


class Batcher:
    """Admission, decoding, micro-batched scoring and post-processing of requests."""

    def __init__(self, limits, metrics=None):
        self.limits, self.metrics = limits, metrics
        self.admitted = 0
        self.reserved = 0              # bytes held by requests (``Reservation``)
        self.decoding = 0
        self._queue = None
        self._pending = []
        self._task = None
        self._pool = ThreadPoolExecutor(limits.decode_threads, thread_name_prefix="decode")
        self._scorer = ThreadPoolExecutor(1, thread_name_prefix="score")

    async def start(self):
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self):
        """Score what is queued, then stop (SIGTERM drains)."""
        while self.admitted:
            await asyncio.sleep(0.01)
        if self._task:
            self._task.cancel()
        self._pool.shutdown(wait=True)
        self._scorer.shutdown(wait=True)

    def _gauge(self):
        if self.metrics:
            self.metrics.queue_depth.set(self.admitted)
            self.metrics.reserved.set(self.reserved)

    def reservation(self):
        return Reservation(self)

    async def predict(self, detector, data, ignore=None, keep_input=False, pixels=0,
                      reservation=None):
        """One request's image bytes (``pixels`` in its header) -> ``Prediction``; QueueFull
        when too many requests, or too much memory, are in (``BYTES_PER_PIXEL`` a pixel are
        added to the request's ``reservation``, released by its caller)."""
        if self.admitted >= self.limits.max_queue:
            raise QueueFull("requests")
        (reservation or self.reservation()).add(int(pixels) * BYTES_PER_PIXEL)
        self.admitted += 1
        self._gauge()
        loop = asyncio.get_running_loop()
        try:
            self.decoding += 1
            try:
                prepared = await loop.run_in_executor(
                    self._pool, lambda: detector.prepare_bytes(data, keep_input))
            finally:
                self.decoding -= 1
            future = loop.create_future()
            self._queue.put_nowait(_Job(detector, prepared, ignore, future))
            amap, score = await future
            return await loop.run_in_executor(
                self._pool, lambda: detector.finish(prepared, amap, score, ignore))
        finally:
            self.admitted -= 1
            self._gauge()

    async def _next_batch(self):
        job = self._pending.pop(0) if self._pending else await self._queue.get()
        batch, deadline = [job], time.perf_counter() + self.limits.max_wait_ms / 1000.0
        while len(batch) < self.limits.max_batch:
            while not self._queue.empty():
                self._pending.append(self._queue.get_nowait())
            same = [j for j in self._pending
                    if j.detector is job.detector and j.ignore is job.ignore]
            for j in same[:self.limits.max_batch - len(batch)]:
                self._pending.remove(j)
                batch.append(j)
            if len(batch) >= self.limits.max_batch or self.decoding == 0 or \
                    time.perf_counter() >= deadline:
                break
            await asyncio.sleep(0.0005)              # requests still decoding: a moment more
        return batch

    async def _loop(self):
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            detector = batch[0].detector
            try:
                maps, scores = await loop.run_in_executor(
                    self._scorer, lambda: detector.score([j.prepared for j in batch],
                                                         batch[0].ignore))
            except Exception as exc:  # noqa: BLE001 - every request of the batch gets it
                for j in batch:
                    if not j.future.done():
                        j.future.set_exception(exc)
                continue
            if self.metrics:
                self.metrics.batch_size.observe(len(batch))
            for j, amap, score in zip(batch, maps, scores):
                if not j.future.done():
                    j.future.set_result((amap, float(score)))


class Metrics:
    """The service's Prometheus metrics, in their own registry."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        self.registry = CollectorRegistry()
        self.requests = Counter("orthoad_requests", "Prediction requests answered, by category "
                                "and HTTP status", ["category", "status"], registry=self.registry)
        self.errors = Counter("orthoad_errors", "Requests that failed, by reason", ["reason"],
                              registry=self.registry)
        self.latency = Histogram("orthoad_request_latency_seconds", "Time from request to "
                                 "answer of /predict", ["category"], registry=self.registry,
                                 buckets=(.005, .01, .02, .03, .05, .075, .1, .15, .25, .5, 1,
                                          2.5, 5))
        self.batch_size = Histogram("orthoad_batch_size", "Images per engine run",
                                    registry=self.registry,
                                    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32))
        self.queue_depth = Gauge("orthoad_queue_depth", "Requests admitted and not yet "
                                 "answered (decoding, queued or scoring)", registry=self.registry)
        self.loads = Counter("orthoad_model_loads", "Models loaded (at start and on reload)",
                             ["category"], registry=self.registry)
        self.reserved = Gauge("orthoad_reserved_bytes", "Memory reserved for the images of the "
                              "admitted requests (pixels x BYTES_PER_PIXEL)",
                              registry=self.registry)

    def render(self):
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
