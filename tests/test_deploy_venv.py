"""A line PC: the runtime installed with ``pip install <repository>`` into a fresh virtual
environment (no Paddle), used from an application's own folder that has its own ``utils.py``,
``datasets/`` and ``models.py``: the Python API gives infer.py's scores, ``orthoad-infer`` and
``orthoad-serve`` run, and importing the package leaves ``os.environ`` as it was.

The environment is made once in .venv-deploy (about a minute; the package is reinstalled at
every run, its dependencies are kept)."""
import json
import os
import signal
import subprocess
import sys

import pytest

import export_model
from conftest import ROOT
from utils import model_path

VENV = os.path.join(ROOT, ".venv-deploy")
PY = os.path.join(VENV, "bin", "python")
BIN = os.path.join(VENV, "bin")


@pytest.fixture(scope="module")
def deploy_python():
    if not os.path.isfile(PY):
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
    r = subprocess.run([PY, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        "--force-reinstall", "--no-deps", ROOT], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    r = subprocess.run([PY, "-m", "pip", "install", "-q", "--disable-pip-version-check", ROOT],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    return PY


@pytest.fixture
def app_folder(tmp_path):
    """An application's folder with names the repository uses too."""
    app = tmp_path / "app"
    (app / "datasets").mkdir(parents=True)
    (app / "datasets" / "__init__.py").write_text("WHO = 'the application'\n")
    (app / "utils.py").write_text("raise ImportError('the application utils is not ours')\n")
    (app / "models.py").write_text("NAME = 'the application models'\n")
    return app


def test_the_installed_runtime_runs_an_export_from_an_application_folder(deploy_python,
                                                                         fitted, tmp_path,
                                                                         app_folder):
    r = subprocess.run([deploy_python, "-m", "pip", "show", "paddlepaddle"],
                       capture_output=True, text=True)
    assert r.returncode != 0                                   # no Paddle installed
    model = model_path(fitted["save"], "ortho", "resnet18", 20, "brick")
    export = tmp_path / "brick"
    export_model.main(export_model.get_args(["--model_path", model, "--save_dir", str(export),
                                             "--format", "onnx"]))
    images = os.path.join(fitted["data"], "brick", "test", "scratch")
    files = sorted(os.path.join(images, f) for f in os.listdir(images))
    r = subprocess.run([sys.executable, "infer.py", "--model_file", str(export),
                        "--input_file", images, "--save_path", str(tmp_path / "here")],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    want = {f: json.load(open(tmp_path / "here" / "regions" / f))["score"]
            for f in sorted(os.listdir(tmp_path / "here" / "regions"))}
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = f"""
import json, os, sys
before = dict(os.environ)
import orthoad_runtime
changed = dict(os.environ) != before
d = orthoad_runtime.Detector.from_export({str(export)!r})
ps = d.predict({files!r})
import datasets, models
print(json.dumps({{"scores": [p.score for p in ps], "env_changed": changed,
                  "paddle": "paddle" in sys.modules, "version": orthoad_runtime.__version__,
                  "theirs": [datasets.WHO, models.NAME],
                  "where": os.path.dirname(orthoad_runtime.__file__)}}))
"""
    r = subprocess.run([deploy_python, "-c", code], cwd=app_folder, capture_output=True,
                       text=True, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert not out["env_changed"] and not out["paddle"] and out["version"]
    assert out["theirs"] == ["the application", "the application models"]
    assert out["where"].startswith(VENV)                        # the installed copy
    scale = max(abs(s) for s in want.values())
    for f, s in zip(files, out["scores"]):
        stem = os.path.splitext(os.path.basename(f))[0]
        assert abs(s - want[f"{stem}.json"]) <= 1e-5 * scale
    r = subprocess.run([os.path.join(BIN, "orthoad-infer"), "--model_file", str(export),
                        "--input_file", images, "--save_path", str(tmp_path / "there"),
                        "--save_pic", "false"], cwd=app_folder, capture_output=True, text=True,
                       env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    got = {f: json.load(open(tmp_path / "there" / "regions" / f))["score"] for f in want}
    assert got == pytest.approx(want, rel=1e-6)


def test_orthoad_serve_from_the_installed_runtime(deploy_python, fitted, tmp_path,
                                                  app_folder):
    """orthoad-serve answers /health and /predict on a folder of exports; a run folder of
    model files is refused with one line naming the fix."""
    model = model_path(fitted["save"], "ortho", "resnet18", 20, "brick")
    exports = tmp_path / "exports"
    export_model.main(export_model.get_args(["--model_path", model, "--save_dir",
                                             str(exports / "brick"), "--format", "onnx"]))
    from test_serving import Server
    srv = Server(exports, script=os.path.join(BIN, "orthoad-serve"), python=deploy_python,
                 env={"PYTHONPATH": ""}, cwd=str(app_folder))
    try:
        assert srv.get("/health")[0] == 200
        image = os.path.join(fitted["data"], "brick", "test", "scratch", "000.png")
        status, body, _ = srv.post_image("/predict", image, category="brick")
        assert status == 200 and body["verdict"] in ("normal", "anomalous")
    finally:
        assert srv.stop(signal.SIGTERM) == 0
    r = subprocess.run([os.path.join(BIN, "orthoad-serve"), "--model_dir",
                        os.path.dirname(model)], cwd=app_folder, capture_output=True, text=True)
    assert r.returncode == 2 and "holds model files" in r.stderr and \
        "export them" in r.stderr and "Traceback" not in r.stderr
