"""A line PC: a virtual environment with only requirements-deploy.txt (no Paddle) runs infer.py,
the Python API and the service on an ONNX export, with the same results as this environment.

The environment is made once in .venv-deploy (about a minute; reused by later runs)."""
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


@pytest.fixture(scope="module")
def deploy_python():
    if not os.path.isfile(PY):
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
    r = subprocess.run([PY, "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r",
                        os.path.join(ROOT, "requirements-deploy.txt")], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    return PY


def test_deploy_environment_has_no_paddle_and_runs_an_onnx_export(deploy_python, fitted,
                                                                  tmp_path):
    r = subprocess.run([deploy_python, "-c", "import paddle"], capture_output=True, text=True)
    assert r.returncode != 0 and "No module named 'paddle'" in r.stderr
    model = model_path(fitted["save"], "ortho", "resnet18", 20, "brick")
    export = tmp_path / "brick"
    export_model.main(export_model.get_args(["--model_path", model, "--save_dir", str(export),
                                             "--format", "onnx"]))
    images = os.path.join(fitted["data"], "brick", "test", "scratch")
    env = dict(os.environ, PYTHONPATH=ROOT)
    outs = {}
    for name, py in (("here", sys.executable), ("deploy", deploy_python)):
        r = subprocess.run([py, "infer.py", "--model_file", str(export / "model.onnx"),
                            "--input_file", images, "--save_path", str(tmp_path / name)],
                           cwd=ROOT, capture_output=True, text=True, env=env)
        assert r.returncode == 0, r.stderr[-2000:]
        outs[name] = {f: json.load(open(tmp_path / name / "regions" / f))
                      for f in sorted(os.listdir(tmp_path / name / "regions"))}
    assert outs["here"].keys() == outs["deploy"].keys()
    for f, a in outs["here"].items():
        b = outs["deploy"][f]
        assert (a["score"], a["verdict"], a["regions"]) == (b["score"], b["verdict"],
                                                            b["regions"])
    code = ("import sys; from runtime.detector import Detector; "
            f"p = Detector.load({str(export)!r}).predict({os.path.join(images, '000.png')!r}); "
            "print(p.score, 'paddle' in sys.modules)")
    r = subprocess.run([deploy_python, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    score, paddle_loaded = r.stdout.split()
    assert float(score) == pytest.approx(outs["here"]["000.json"]["score"], rel=1e-6)
    assert paddle_loaded == "False"
    from test_serving import Server
    srv = Server(tmp_path, python=deploy_python, env={"PYTHONPATH": ROOT})
    try:
        status, body, _ = srv.post_image("/predict", os.path.join(images, "000.png"),
                                         category="brick")
        assert status == 200 and body["score"] == pytest.approx(
            outs["here"]["000.json"]["score"], rel=1e-6)
    finally:
        assert srv.stop(signal.SIGTERM) == 0
