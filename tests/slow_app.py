"""A service whose engine takes SLOW_APP_SECONDS per batch: serve.py's own process, flags,
signal handling and uvicorn set-up, with a slow engine stand-in built through the app factory
(``serve.FACTORY``), so that requests are surely in flight when a test signals it.

    python tests/slow_app.py --model_dir RUN_FOLDER --port N [serve.py flags]
"""
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def make():
    """The app of ORTHOAD_SERVE with every model's engine slowed down."""
    import json

    from runtime.app import create_app
    from runtime.detector import Detector
    from runtime.service import Limits
    from utils import setup_logging
    cfg = json.loads(os.environ["ORTHOAD_SERVE"])
    setup_logging()
    delay = float(os.environ.get("SLOW_APP_SECONDS", "1"))

    def load(path):
        d = Detector.load(path, engine=cfg["engine"], threads=cfg["threads"])
        run = d._run

        def slow(x):
            time.sleep(delay)
            return run(x)
        d._run = slow
        return d
    return create_app(cfg["model_dir"], cfg["engine"], cfg["threads"], Limits(**cfg["limits"]),
                      load=load)


if __name__ == "__main__":
    import serve
    from utils import run_cli
    serve.FACTORY = "slow_app:make"
    sys.exit(run_cli(serve.main, serve.get_args))
