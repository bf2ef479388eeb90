"""The HTTP service (FastAPI): thin routes over ``orthoad_runtime.service`` and ``orthoad_runtime.detector``.

    POST /predict?category=C[&mask=true][&overlay=true]   an image as the raw body
         (Content-Type image/png, image/jpeg, ...) or as a multipart field named "image"
    GET  /health     200 {"status": "ready"} once the models are loaded, else 503
    GET  /models     categories, engines, input geometry, thresholds, model hashes, load times
    GET  /metrics    Prometheus text format
    GET  /           a page to try an image in a browser

Status codes: 400 no image / not an image, 401 no valid API key (``--api_key_file``; /health
and / stay open), 404 unknown category, 408 body not received within ``--read_timeout``, 413
too many bytes or too many pixels (read from the image's header, before decoding), 503 not
ready, model not loaded, or too many requests or too much image memory in (with Retry-After),
500 an engine failure. Every error answer is JSON {"error": "...", ...}.
"""
import asyncio
import logging
import os
import time
from contextlib import asynccontextmanager, contextmanager

from orthoad_runtime.transforms import TooManyPixels, check_pixels, open_header
from .errors import UserError

from .images import b64, mask_png, overlay_png
from .service import Batcher, Limits, Metrics, QueueFull, Registry

logger = logging.getLogger(__name__)

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")


class _TooLarge(Exception):
    pass


def create_app(model_dir, threads=None, limits=None, load=None, api_keys=None,
               show_paths=False):
    """The FastAPI application serving every model of ``model_dir``.

    Args:
        load: ``path -> Detector`` (default: ``Detector.from_export`` on ``threads``; the
            repository's serve.py passes one that opens model files too).
        api_keys: an ``orthoad_runtime.access.ApiKeys`` (None: no access control).
        show_paths: /models shows the models' file paths (default: names and SHA-256 only).
    """
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse, Response

    from .detector import Detector
    limits = limits or Limits()
    metrics = Metrics()
    base_load = load or (lambda path: Detector.from_export(path, threads=threads,
                                                           batch_size=limits.max_batch))

    def load_limited(path):
        d = base_load(path)
        d.max_pixels = limits.max_pixels
        return d
    registry = Registry(model_dir, load_limited, metrics, show_paths,
                        model_files=load is not None)
    batcher = Batcher(limits, metrics)

    @asynccontextmanager
    async def lifespan(app):
        with _keep_signal_handlers():     # Paddle's import installs handlers that abort on
            registry.load_all()           # SIGTERM: uvicorn's (drain, then exit) are put back
        registry.watch(limits.reload_interval_s)
        await batcher.start()
        yield
        registry.stop()
        await batcher.stop()                           # after uvicorn drained the requests

    app = FastAPI(title="OrthoAD-Paddle inspection service", lifespan=lifespan)
    app.state.registry, app.state.batcher, app.state.metrics = registry, batcher, metrics

    def error(status, message, category="", **extra):
        metrics.requests.labels(category, str(status)).inc()
        metrics.errors.labels(str(status)).inc()
        headers = {"Retry-After": str(limits.retry_after_s)} if status == 503 else None
        if status == 401:
            headers = {"WWW-Authenticate": "Bearer"}
        return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)

    def refused(request):
        """The 401 answer if access control is on and the request carries no valid key."""
        if api_keys is None or api_keys.allows(request.headers.get("authorization")):
            return None
        return error(401, "this service needs an API key: send 'Authorization: Bearer <key>' "
                          "with a key of its --api_key_file")

    async def read_image(request, held):
        """The image bytes of a raw or multipart request (None if it has none), received
        within ``read_timeout_s`` (else ``asyncio.TimeoutError``), each chunk added to the
        request's memory reservation ``held`` (QueueFull when the budget has no room)."""
        size = request.headers.get("content-length")
        if size and size.isdigit() and int(size) > limits.max_body_bytes:
            raise _TooLarge()
        return await asyncio.wait_for(_receive(request, held), limits.read_timeout_s)

    async def _receive(request, held):
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "multipart/form-data":
            size = request.headers.get("content-length")
            held.add(int(size) if size and size.isdigit() else limits.max_body_bytes)
            form = await request.form(max_files=1, max_fields=8,
                                      max_part_size=limits.max_body_bytes)
            part = form.get("image")
            if part is None or not hasattr(part, "read"):
                return None
            data = await part.read()
        else:
            chunks, n = [], 0
            async for chunk in request.stream():
                n += len(chunk)
                if n > limits.max_body_bytes:
                    raise _TooLarge()
                held.add(len(chunk))
                chunks.append(chunk)
            data = b"".join(chunks)
        if len(data) > limits.max_body_bytes:
            raise _TooLarge()
        return data or None

    @app.post("/predict")
    async def predict(request: Request, category: str = "", mask: bool = False,
                      overlay: bool = False):
        start = time.perf_counter()
        denied = refused(request)
        if denied:
            return denied
        if not registry.ready:
            return error(503, "the models are still loading: retry shortly")
        if not category and len(registry.detectors) == 1:
            category = next(iter(registry.detectors))
        try:
            detector = registry.get(category)
        except LookupError as exc:
            if isinstance(exc, KeyError):
                return error(404, f"unknown category '{category}': pass ?category= one of "
                             + ", ".join(sorted(registry.detectors)), category,
                             categories=sorted(registry.detectors))
            return error(503, f"model '{category}' is not loaded ({exc})", category)
        held = batcher.reservation()
        try:
            return await _predict(request, detector, category, mask, overlay, start, held)
        finally:
            held.close()

    async def _predict(request, detector, category, mask, overlay, start, held):
        try:
            data = await read_image(request, held)
        except QueueFull:
            return error(503, "the service is busy (its image memory budget is in use): retry "
                              "after a moment", category)
        except _TooLarge:
            return error(413, f"the image is larger than {limits.max_body_bytes} bytes: send a "
                              "smaller file", category)
        except asyncio.TimeoutError:
            return error(408, f"the image was not received within {limits.read_timeout_s:g} s "
                              "(--read_timeout): send it in one go", category)
        if data is None:
            return error(400, "the request holds no image: send the image as the body "
                              "(Content-Type: image/png, image/jpeg, ...) or as a multipart "
                              "field named 'image'", category)
        try:
            header = open_header(data, "the uploaded image")
            pixels = check_pixels(header.width, header.height, "the uploaded image",
                                  limits.max_pixels)
        except TooManyPixels as exc:
            return error(413, str(exc), category)
        except UserError as exc:
            return error(400, str(exc), category)
        del header
        try:
            p = await batcher.predict(detector, data, keep_input=overlay, pixels=pixels,
                                      reservation=held)
        except QueueFull as exc:
            what = f"{limits.max_queue} requests" if str(exc) == "requests" else \
                "its image memory budget"
            return error(503, f"the service is busy ({what} in): retry after a moment",
                         category)
        except TooManyPixels as exc:
            return error(413, str(exc), category)
        except UserError as exc:
            return error(400, str(exc), category)
        except Exception as exc:  # noqa: BLE001 - an engine failure: one answer, service up
            logger.exception("scoring failed")
            return error(500, f"scoring failed ({type(exc).__name__}: {exc})", category)
        body = p.record()
        body.pop("image", None)
        body.update(category=category, engine=detector.engine,
                    model_sha256=detector.source.get("sha256"))
        if mask:
            body["mask_png"] = b64(mask_png(p))
        if overlay:
            body["overlay_png"] = b64(overlay_png(p, detector.display))
            body["overlay_size"] = list(p.anomaly_map.shape)
        elapsed = time.perf_counter() - start
        body["latency_ms"] = round(1000 * elapsed, 2)
        metrics.latency.labels(category).observe(elapsed)
        metrics.requests.labels(category, "200").inc()
        return body

    @app.get("/health")
    async def health():
        if registry.ready and registry.detectors:
            return {"status": "ready", "models": len(registry.detectors),
                    "failed": len(registry.failures)}
        status = "loading" if not registry.ready else "no model loaded"
        return JSONResponse({"status": status, "failed": registry.failures}, status_code=503)

    @app.get("/models")
    async def models(request: Request):
        return refused(request) or registry.info()

    @app.get("/metrics")
    async def metrics_text(request: Request):
        denied = refused(request)
        if denied:
            return denied
        data, kind = metrics.render()
        return Response(data, media_type=kind)

    @app.get("/", response_class=HTMLResponse)
    async def page():
        with open(os.path.join(STATIC, "index.html"), encoding="utf-8") as fh:
            return fh.read()

    return app


@contextmanager
def _keep_signal_handlers():
    import signal
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            if callable(handler) or handler in (signal.SIG_DFL, signal.SIG_IGN):
                try:
                    signal.signal(sig, handler)
                except ValueError:                # not the main thread (tests)
                    pass


def environment():
    """The service's configuration from ``ORTHOAD_SERVE`` (JSON written by the serve command)."""
    import json
    return json.loads(os.environ["ORTHOAD_SERVE"])


def app_from_environment(load=None):
    """The application described by ``ORTHOAD_SERVE``, for uvicorn's worker processes
    (``--workers N``), each of which builds its own; ``load`` as in ``create_app``."""
    cfg = environment()
    from .util import setup_logging
    setup_logging()
    keys = None
    if cfg.get("api_key_file"):
        from .access import ApiKeys
        keys = ApiKeys(cfg["api_key_file"])
    return create_app(cfg["model_dir"], cfg["threads"], Limits(**cfg["limits"]), load=load,
                      api_keys=keys, show_paths=cfg.get("show_paths", False))
