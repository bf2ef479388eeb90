"""The Python API and the service: the Detector against predict.py's outputs on every input kind
and engine, thread safety; serve.py's endpoints, limits, errors, hot reload, SIGTERM drain; the
page in a real browser (headless Chromium, where installed)."""
import base64
import concurrent.futures
import http.client
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image

import export_model
import predict
from conftest import ROOT, run_script
from runtime.detector import Detector
from utils import model_path


@pytest.fixture(scope="module")
def models(fitted, tmp_path_factory):
    """A run folder of two categories (copied) and their ONNX exports."""
    root = tmp_path_factory.mktemp("serving")
    run = root / "run"
    run.mkdir()
    for cat in ("brick", "gravel"):
        shutil.copy(model_path(fitted["save"], "ortho", "resnet18", 20, cat), run)
        export_model.main(export_model.get_args(["--model_path", str(run / f"{cat}.safetensors"),
                                                 "--save_dir", str(root / "exports" / cat),
                                                 "--format", "onnx"]))
    images = sorted(os.path.join(fitted["data"], "brick", "test", d, f)
                    for d in ("good", "scratch", "blob") for f in
                    os.listdir(os.path.join(fitted["data"], "brick", "test", d)))
    return {"run": run, "exports": root / "exports", "images": images, "root": root}


def _by_path(rows):
    return {r["path"]: r for r in rows}


@pytest.mark.parametrize("engine", ["dygraph", "onnxruntime"])
def test_detector_equals_predict_py_outputs(models, tmp_path, engine):
    """Detector.load on the model file (and on the ONNX export) gives predict.py's scores,
    verdicts and regions, from paths, arrays and PIL images alike."""
    rows = predict.main(predict.get_args([
        os.path.dirname(models["images"][0]), "--model_path",
        str(models["run"] / "brick.safetensors"), "--engine", "dygraph", "--save_pic", "false",
        "--output", str(tmp_path / "p")]))
    ref = {r["path"]: json.load(open(r["regions"])) for r in rows}
    files = sorted(ref)
    source = models["run"] / "brick.safetensors" if engine == "dygraph" else \
        models["exports"] / "brick"
    det = Detector.load(str(source), engine=engine)
    from datasets.transforms import load_rgb
    for kind, images in (("path", files), ("array", [load_rgb(f) for f in files]),
                         ("pil", [Image.open(f) for f in files])):
        out = det.predict(images, batch_size=3)
        for f, p in zip(files, out):
            want = ref[f]
            assert p.score == pytest.approx(want["score"], rel=1e-4), (kind, f)
            assert p.verdict == want["verdict"] and len(p.regions) == want["n_regions"]
            assert p.relative_score == pytest.approx(want["score"] / want["image_threshold"],
                                                     rel=1e-4)
            assert p.record()["verdict_rule"] and p.record()["regions_rule"]


def test_detector_is_thread_safe(models):
    det = Detector.load(str(models["exports"] / "gravel"))
    images = models["images"]
    alone = [p.score for p in det.predict(images)]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda f: det.predict(f).score, images * 3))
    np.testing.assert_allclose(together, alone * 3, rtol=1e-6)


def test_onnx_api_imports_no_paddle(models):
    code = ("import sys; from runtime.detector import Detector; "
            f"d = Detector.load({str(models['exports'] / 'brick')!r}); "
            f"p = d.predict({models['images'][0]!r}); "
            "print(p.verdict, 'paddle' in sys.modules, any(m.startswith('models.orthoad') "
            "for m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-1500:]
    assert r.stdout.split()[1:] == ["False", "False"]


# --------------------------------------------------------------------------- the service

def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, model_dir, *extra, python=sys.executable, env=None):
        self.port = _free_port()
        self.log = open(os.path.join(str(model_dir), f"..{os.sep}serve-{self.port}.log"), "w+")
        self.proc = subprocess.Popen(
            [python, os.path.join(ROOT, "serve.py"), "--model_dir", str(model_dir), "--port",
             str(self.port), "--reload_interval", "0.3", *extra], cwd=ROOT, stdout=self.log,
            stderr=subprocess.STDOUT, env=dict(os.environ, **(env or {})))
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(self.text())
            try:
                if self.get("/health")[0] in (200, 503):
                    if self.get("/health")[0] == 200 or self.get("/models")[1].get("ready"):
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError("the service did not start: " + self.text())

    def text(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-3000:]

    def request(self, method, path, body=None, headers=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            data = r.read()
            kind = r.getheader("Content-Type", "")
            return r.status, (json.loads(data) if "json" in kind else data.decode()), r
        finally:
            conn.close()

    def get(self, path):
        s, b, _ = self.request("GET", path)
        return s, b

    def post_image(self, path, file, **params):
        query = "&".join(f"{k}={v}" for k, v in params.items())
        with open(file, "rb") as fh:
            data = fh.read()
        s, b, r = self.request("POST", f"{path}?{query}", data, {"Content-Type": "image/png"})
        return s, b, r

    def stop(self, sig=signal.SIGTERM):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.returncode


@pytest.fixture(scope="module")
def server(models):
    srv = Server(models["run"], "--max_body_mb", "1")
    yield srv
    srv.stop()


def _multipart(field, name, data):
    boundary = "----orthoad-test"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; "
            f"filename=\"{name}\"\r\nContent-Type: image/png\r\n\r\n").encode() + data + \
        f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def test_service_answers_like_the_detector(server, models):
    det = Detector.load(str(models["run"] / "brick.safetensors"))
    health = server.get("/health")
    assert health == (200, {"status": "ready", "models": 2, "failed": 0})
    info = server.get("/models")[1]["models"]
    assert sorted(info) == ["brick", "gravel"] and info["brick"]["input_size"] == [128, 128]
    assert len(info["brick"]["source"]["sha256"]) == 64 and info["brick"]["engine"]
    for f in models["images"][:4]:
        want = det.predict(f)
        status, body, _ = server.post_image("/predict", f, category="brick", mask="true",
                                            overlay="true")
        assert status == 200, body
        assert body["score"] == pytest.approx(want.score, rel=1e-4)
        assert body["verdict"] == want.verdict and body["regions"] == want.regions
        mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["mask_png"]))))
        np.testing.assert_array_equal(mask > 0, want.mask)
        overlay = Image.open(io.BytesIO(base64.b64decode(body["overlay_png"])))
        assert overlay.size == (128, 128)
        multipart = _multipart("image", "x.png", open(f, "rb").read())
        s2, b2, _ = server.request("POST", "/predict?category=brick", *multipart)
        assert s2 == 200 and b2["score"] == pytest.approx(body["score"], rel=1e-6)


def test_service_errors_are_clear_and_it_stays_up(server, models):
    f = models["images"][0]
    assert server.request("POST", "/predict?category=brick", b"",
                          {"Content-Type": "image/png"})[0] == 400
    s, b, _ = server.request("POST", "/predict?category=brick", b"not an image",
                             {"Content-Type": "image/png"})
    assert s == 400 and "not an image format" in b["error"]
    s, b, _ = server.request("POST", "/predict?category=brick", *_multipart("file", "a", b"x"))
    assert s == 400 and "multipart field named 'image'" in b["error"]
    s, b, _ = server.post_image("/predict", f, category="carpet")
    assert s == 404 and b["categories"] == ["brick", "gravel"]
    big = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (700, 700, 3), np.uint8)).save(
        big, format="PNG")
    s, b, _ = server.request("POST", "/predict?category=brick", big.getvalue(),
                             {"Content-Type": "image/png"})
    assert s == 413 and "larger than" in b["error"]
    assert server.post_image("/predict", f, category="brick")[0] == 200     # still up
    metrics = server.get("/metrics")[1]
    assert 'orthoad_requests_total{category="brick",status="400"}' in metrics
    assert "orthoad_batch_size_bucket" in metrics and "orthoad_queue_depth" in metrics


def test_service_batches_concurrent_requests(server, models):
    files = models["images"] * 4
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(lambda f: server.post_image("/predict", f,
                                                             category="gravel")[0], files))
    assert statuses == [200] * len(files)
    metrics = server.get("/metrics")[1]
    count = float(next(line.split()[-1] for line in metrics.splitlines()
                       if line.startswith("orthoad_batch_size_count")))
    total = float(next(line.split()[-1] for line in metrics.splitlines()
                       if line.startswith("orthoad_batch_size_sum")))
    assert total / count > 1.5                         # several requests per engine run


def test_a_full_queue_answers_503_with_retry_after(models):
    srv = Server(models["run"], "--max_queue", "2", "--max_wait_ms", "50")
    try:
        f = models["images"][0]
        with concurrent.futures.ThreadPoolExecutor(24) as pool:
            answers = list(pool.map(lambda _: srv.post_image("/predict", f, category="brick"),
                                    range(48)))
        statuses = sorted({a[0] for a in answers})
        assert statuses == [200, 503], statuses
        busy = next(a for a in answers if a[0] == 503)
        assert busy[2].getheader("Retry-After") == "1" and "busy" in busy[1]["error"]
    finally:
        assert srv.stop() == 0


def test_a_broken_model_is_reported_and_the_others_serve(models, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(models["run"], run)
    (run / "gravel.safetensors").write_bytes(b"broken")
    srv = Server(run)
    try:
        assert srv.get("/health")[0] == 200
        failed = srv.get("/models")[1]["failed"]
        assert list(failed) == ["gravel"] and "not a readable model file" in failed["gravel"]
        s, b, _ = srv.post_image("/predict", models["images"][0], category="gravel")
        assert s == 503 and "not loaded" in b["error"]
        assert srv.post_image("/predict", models["images"][0], category="brick")[0] == 200
    finally:
        srv.stop()


def test_a_replaced_model_is_picked_up_without_a_failed_request(models, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(models["run"], run)
    srv = Server(run)
    stop = threading.Event()
    statuses = []

    def hammer():
        while not stop.is_set():
            statuses.append(srv.post_image("/predict", models["images"][1], category="brick")[0])
    try:
        before = srv.get("/models")[1]["models"]["brick"]["source"]["sha256"]
        thread = threading.Thread(target=hammer)
        thread.start()
        time.sleep(0.5)
        tmp = run / ".new"
        shutil.copy(run / "gravel.safetensors", tmp)
        os.replace(tmp, run / "brick.safetensors")               # as train.py saves: a rename
        deadline = time.time() + 30
        while time.time() < deadline and srv.get("/models")[1]["models"]["brick"]["source"][
                "sha256"] == before:
            time.sleep(0.2)
        time.sleep(0.5)
        stop.set()
        thread.join()
        after = srv.get("/models")[1]["models"]["brick"]["source"]["sha256"]
        assert after != before and len(statuses) > 5 and set(statuses) == {200}
    finally:
        stop.set()
        srv.stop()


def test_sigterm_drains_the_requests_in_flight(models):
    srv = Server(models["exports"])
    f = models["images"][0]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(srv.post_image, "/predict", f, category="brick")
                   for _ in range(8)]
        time.sleep(0.05)
        srv.proc.send_signal(signal.SIGTERM)
        statuses = [fu.result()[0] for fu in futures]
    assert srv.proc.wait(60) == 0
    assert statuses == [200] * 8


def test_serve_refuses_a_folder_without_models(tmp_path):
    r = run_script("serve.py", "--model_dir", str(tmp_path))
    assert r.returncode == 2 and "no model in" in r.stderr and "Traceback" not in r.stderr


# --------------------------------------------------------------------------- the page

def _chromium():
    for path in ("/usr/bin/chromium", "/usr/bin/chromium-browser"):
        if os.path.isfile(path) and shutil.which("chromedriver"):
            return path
    return None


@pytest.mark.skipif(_chromium() is None, reason="Debian's chromium and chromium-driver are not "
                    "installed (CI installs them: apt-get install chromium chromium-driver)")
def test_the_page_shows_the_verdict_in_a_real_browser(server, models, tmp_path):
    """Headless Chromium driven by Selenium: choose a category, upload an image, read the
    verdict, the score and the regions from the page; a screenshot is kept."""
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait
    opts = webdriver.ChromeOptions()
    opts.binary_location = _chromium()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 "--window-size=1280,900", f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(flag)
    service = webdriver.ChromeService(executable_path=shutil.which("chromedriver"))
    driver = webdriver.Chrome(options=opts, service=service)
    try:
        driver.get(f"http://127.0.0.1:{server.port}/")
        wait = WebDriverWait(driver, 30)
        wait.until(lambda d: len(Select(d.find_element(By.ID, "category")).options) == 2)
        Select(driver.find_element(By.ID, "category")).select_by_value("brick")
        image = next(f for f in models["images"] if "scratch" in f)
        driver.find_element(By.ID, "file").send_keys(image)
        wait.until(ec.visibility_of_element_located((By.ID, "result")))
        want = Detector.load(str(models["run"] / "brick.safetensors")).predict(image)
        assert driver.find_element(By.ID, "verdict").text == want.verdict
        assert float(driver.find_element(By.ID, "score").text) == pytest.approx(want.score,
                                                                                rel=1e-3)
        assert driver.find_element(By.ID, "regions").text == str(len(want.regions))
        canvas = driver.find_element(By.ID, "view")
        assert int(canvas.get_attribute("width")) == want.width
        driver.save_screenshot(str(models["root"] / "page.png"))
    finally:
        driver.quit()


def test_figure_outline_erosion_equals_scipy():
    """The figure's mask outline uses a NumPy erosion (no SciPy import at a cold start):
    against scipy.ndimage.binary_erosion, the oracle."""
    from scipy import ndimage
    from runtime.figure import _eroded
    rng = np.random.default_rng(0)
    for steps in (1, 2, 3):
        m = rng.random((40, 50)) < 0.7
        np.testing.assert_array_equal(_eroded(m, steps), ndimage.binary_erosion(m, iterations=steps))
