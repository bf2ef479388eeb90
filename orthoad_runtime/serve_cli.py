"""A warm inspection service: every export of a folder behind HTTP (FastAPI + uvicorn), loaded
once, micro-batched, reloaded when a file changes (``orthoad-serve`` once installed; the
repository's serve.py runs it too, and also serves run folders of model files).

    orthoad-serve --model_dir export --port 8000
    curl -s --data-binary @part.png -H "Content-Type: image/png" \
        "http://127.0.0.1:8000/predict?category=brick"

See ``orthoad_runtime.app`` for the endpoints and docs/serving.md for limits, keys, workers.
"""
import json
import logging
import os
import sys

from .access import ApiKeys
from .errors import UserError
from .service import Limits, default_max_pixels, discover
from .util import ArgumentParser, positive_int, run_cli

logger = logging.getLogger("serve")
FACTORY = "orthoad_runtime.app:app_from_environment"    # exports only; see the repo's serve.py


def get_args(argv=None, model_files=False):
    """The serve command's flags; with ``model_files`` (the repository's serve.py) also those of
    model files: --engine and --weights."""
    p = ArgumentParser(description="Serve every model of a folder over HTTP: POST /predict, "
                                   "GET /health, /models, /metrics and a page at /.")
    p.add_argument("--model_dir", type=str, required=True,
                   help=("a run folder (<category>.safetensors files) or a folder of exports "
                         if model_files else "a folder of exports ") +
                   "(<category>/deploy.json + model.onnx or model.json), or one export")
    p.add_argument("--host", type=str, default="127.0.0.1",
                   help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    if model_files:
        p.add_argument("--engine", type=str, default="auto",
                       choices=["auto", "dygraph", "inference", "onnxruntime"],
                       help="engine of the model files (exports run on their own: ONNX Runtime "
                            "for model.onnx, Paddle Inference for model.json)")
        p.add_argument("--weights", type=str, default=None,
                       help="backbone weights of the model files (.pdparams or .safetensors) "
                            "where they cannot be downloaded; exports hold their own")
        p.add_not_needed(("--pretrained", "--no-pretrained"),
                         "the model files say which weights their backbones have")
    else:
        p.add_not_needed(("--engine", "--weights", "--pretrained", "--no-pretrained"),
                         "exports run on their own engine with the weights they hold (model "
                         "files need the repository's serve.py)")
    p.add_argument("--workers", type=positive_int, default=1,
                   help="worker processes (each loads every model; see docs/serving.md)")
    p.add_argument("--cpu_threads", type=positive_int, default=None,
                   help="engine threads per worker (default: every CPU this process may use)")
    p.add_argument("--max_batch", type=positive_int, default=16,
                   help="images scored in one engine run")
    p.add_argument("--max_wait_ms", type=float, default=3.0,
                   help="how long a batch waits for requests that are still being decoded")
    p.add_argument("--max_queue", type=positive_int, default=64,
                   help="requests admitted at once; more get 503 with Retry-After")
    p.add_argument("--max_body_mb", type=float, default=32.0,
                   help="largest image upload, in MB (413 beyond)")
    p.add_argument("--memory_budget_mb", type=float, default=1024.0,
                   help="memory the admitted requests' images may take once decoded (24 bytes "
                        "a pixel: the decoded image, the original-size map, mask and regions); "
                        "beyond it 503 with Retry-After")
    p.add_argument("--max_pixels", type=positive_int, default=None,
                   help="largest image in pixels, read from its header before decoding (413 "
                        "beyond); default: --max_queue images within --memory_budget_mb, and "
                        "never below a 4096 x 3072 frame")
    p.add_argument("--read_timeout", type=float, default=10.0,
                   help="seconds a client may take to send its image (408 beyond): a slow or "
                        "stalled sender holds no worker or queue slot longer")
    p.add_argument("--api_key_file", type=str, default=None,
                   help="file of API keys, one a line (read again when it changes): /predict, "
                        "/models and /metrics then need 'Authorization: Bearer <key>'; /health "
                        "stays open")
    p.add_bool("--show_paths", False, "/models shows the models' absolute file paths (default: "
               "file names and SHA-256 only)")
    p.add_argument("--reload_interval", type=float, default=2.0,
                   help="seconds between checks of the model files for changes (0: never)")
    return p.parse_args(argv)


def main(args, factory=FACTORY):
    """Check the flags and the folder (one line each, before uvicorn starts), then serve with
    ``factory`` (uvicorn's import string of the app factory each worker calls)."""
    model_files = factory != FACTORY
    discover(args.model_dir, model_files)              # a bad folder: one line, before uvicorn
    if args.max_body_mb <= 0 or args.max_wait_ms < 0 or args.reload_interval < 0 or \
            args.memory_budget_mb <= 0 or args.read_timeout <= 0:
        raise UserError("--max_body_mb, --memory_budget_mb and --read_timeout must be "
                        "positive, --max_wait_ms and --reload_interval at least 0")
    if args.api_key_file:
        ApiKeys(args.api_key_file)                     # a bad key file: one line, before uvicorn
    elif args.host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("serving on %s without --api_key_file: anyone who reaches this port can "
                       "score images and read /models and /metrics; give an --api_key_file",
                       args.host)
    budget = int(args.memory_budget_mb * (1 << 20))
    limits = Limits(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                    max_queue=args.max_queue, max_body_bytes=int(args.max_body_mb * (1 << 20)),
                    memory_budget_bytes=budget,
                    max_pixels=args.max_pixels or default_max_pixels(budget, args.max_queue),
                    read_timeout_s=args.read_timeout,
                    reload_interval_s=args.reload_interval or 1e9)
    threads = args.cpu_threads
    if threads is None:
        threads = max(1, len(os.sched_getaffinity(0)) // args.workers)
    os.environ["ORTHOAD_SERVE"] = json.dumps({
        "model_dir": os.path.abspath(args.model_dir), "threads": threads,
        "limits": limits.__dict__,
        "api_key_file": args.api_key_file and os.path.abspath(args.api_key_file),
        "show_paths": args.show_paths,
        "engine": getattr(args, "engine", None),
        "weights": getattr(args, "weights", None) and os.path.abspath(args.weights)})
    import signal
    import uvicorn
    # uvicorn drains on SIGTERM, then restores this handler and raises the signal again: exit 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    logger.info("serving %s on http://%s:%d with %d worker(s), %d engine thread(s) each",
                args.model_dir, args.host, args.port, args.workers, threads)
    uvicorn.run(factory, factory=True, host=args.host,
                port=args.port, workers=args.workers, log_level="warning",
                timeout_graceful_shutdown=30, access_log=False,
                timeout_keep_alive=max(1, int(args.read_timeout)))
    return 0


def entry():
    """The ``orthoad-serve`` console script: exports only."""
    return run_cli(main, get_args)
