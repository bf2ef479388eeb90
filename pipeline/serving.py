"""The repository's service: the runtime's app (``orthoad_runtime.app``) with a loader that opens
model files too (``pipeline.detectors.open_detector``), for serve.py's uvicorn workers."""
from orthoad_runtime.app import app_from_environment as runtime_app
from orthoad_runtime.app import environment

from .detectors import open_detector


def app_from_environment():
    cfg = environment()

    def load(path):
        return open_detector(path, engine=cfg.get("engine") or "auto", threads=cfg["threads"],
                             weights=cfg.get("weights"), batch_size=cfg["limits"]["max_batch"])
    return runtime_app(load=load)
