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
    from orthoad_runtime.app import app_from_environment, environment
    from pipeline.detectors import open_detector
    cfg = environment()
    delay = float(os.environ.get("SLOW_APP_SECONDS", "1"))

    def load(path):
        d = open_detector(path, engine=cfg["engine"] or "auto", threads=cfg["threads"])
        score = d.score

        def slow(prepared, ignore=None):
            time.sleep(delay)
            return score(prepared, ignore)
        d.score = slow
        return d
    return app_from_environment(load=load)


if __name__ == "__main__":
    import serve
    from orthoad_runtime import serve_cli
    from utils import run_cli
    sys.exit(run_cli(lambda args: serve_cli.main(args, "slow_app:make"), serve.get_args))
