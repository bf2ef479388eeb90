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
from bench.serve import png_bomb
from conftest import ROOT, run_script
from orthoad_runtime.detector import Detector
from pipeline.detectors import from_model_file
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
    """The Detector of the model file (and of the ONNX export) gives predict.py's scores,
    verdicts and regions, from paths, arrays and PIL images alike."""
    rows = predict.main(predict.get_args([
        os.path.dirname(models["images"][0]), "--model_path",
        str(models["run"] / "brick.safetensors"), "--engine", "dygraph", "--save_pic", "false",
        "--output", str(tmp_path / "p")]))
    ref = {r["path"]: json.load(open(r["regions"])) for r in rows}
    files = sorted(ref)
    source = models["run"] / "brick.safetensors" if engine == "dygraph" else \
        models["exports"] / "brick"
    det = from_model_file(str(source), engine=engine) if engine == "dygraph" else \
        Detector.from_export(str(source))
    from orthoad_runtime.transforms import load_rgb
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
    det = Detector.from_export(str(models["exports"] / "gravel"))
    images = models["images"]
    alone = [p.score for p in det.predict(images)]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda f: det.predict(f).score, images * 3))
    np.testing.assert_allclose(together, alone * 3, rtol=1e-6)


def test_onnx_api_imports_no_paddle(models):
    code = ("import sys; from orthoad_runtime import Detector; "
            f"d = Detector.from_export({str(models['exports'] / 'brick')!r}); "
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
    def __init__(self, model_dir, *extra, python=sys.executable, env=None, script=None,
                 cwd=ROOT):
        self.port = _free_port()
        self.log = open(os.path.join(str(model_dir), f"..{os.sep}serve-{self.port}.log"), "w+")
        self.proc = subprocess.Popen(
            [python, script or os.path.join(ROOT, "serve.py"), "--model_dir", str(model_dir),
             "--port", str(self.port), "--reload_interval", "0.3", *extra], cwd=cwd,
            stdout=self.log, stderr=subprocess.STDOUT, env=dict(os.environ, **(env or {})))
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

    def peak_rss(self):
        """The server process's peak resident memory (VmHWM), in bytes."""
        with open(f"/proc/{self.proc.pid}/status") as fh:
            line = next(x for x in fh if x.startswith("VmHWM:"))
        return int(line.split()[1]) * 1024

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

    def get(self, path, headers=None):
        s, b, _ = self.request("GET", path, headers=headers)
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
    det = from_model_file(str(models["run"] / "brick.safetensors"))
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


def test_sixteen_concurrent_clients_each_get_their_own_answer(server, models):
    """16 clients, every one sending other images: each answer equals Detector.predict on
    THAT request's image (a batcher that swapped answers within a batch would fail), and the
    requests were batched (mean engine batch above 1.5)."""
    det = from_model_file(str(models["run"] / "gravel.safetensors"))
    files = models["images"] * 4
    want = {f: det.predict(f).score for f in models["images"]}
    assert len(set(np.round(list(want.values()), 4))) == len(want)      # distinguishable

    def ask(f):
        s, b, _ = server.post_image("/predict", f, category="gravel")
        return f, s, b
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(ask, files))
    for f, status, body in answers:
        assert status == 200, body
        assert body["score"] == pytest.approx(want[f], rel=1e-4), f
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
    """While a client hammers /predict, brick's model file is replaced (a rename, as train.py
    saves): no request fails, and afterwards the answers are the NEW model's (Detector on the
    new file), not only its SHA in /models."""
    run = tmp_path / "run"
    shutil.copytree(models["run"], run)
    srv = Server(run)
    stop = threading.Event()
    statuses = []
    image = models["images"][1]

    def hammer():
        while not stop.is_set():
            statuses.append(srv.post_image("/predict", image, category="brick")[0])
    try:
        old = srv.post_image("/predict", image, category="brick")[1]["score"]
        thread = threading.Thread(target=hammer)
        thread.start()
        time.sleep(0.5)
        tmp = run / ".new"
        shutil.copy(run / "gravel.safetensors", tmp)
        os.replace(tmp, run / "brick.safetensors")
        new = from_model_file(str(run / "brick.safetensors")).predict(image).score
        assert abs(new - old) > 1e-3 * abs(old)                 # the two models differ here
        deadline = time.time() + 30
        while time.time() < deadline and abs(srv.post_image(
                "/predict", image, category="brick")[1]["score"] - new) > 1e-4 * abs(new):
            time.sleep(0.2)
        stop.set()
        thread.join()
        assert srv.post_image("/predict", image, category="brick")[1]["score"] == \
            pytest.approx(new, rel=1e-4)
        assert len(statuses) > 5 and set(statuses) == {200}
    finally:
        stop.set()
        srv.stop()


@pytest.mark.parametrize("breakage", ["truncated", "crafted header"])
def test_a_broken_replacement_keeps_the_old_model_serving(models, tmp_path, breakage):
    """A replacement that fails its checks is reported in /health and /models, and the model
    loaded before it keeps answering (with its own scores)."""
    run = tmp_path / "run"
    shutil.copytree(models["run"], run)
    srv = Server(run)
    image = models["images"][2]
    try:
        before = srv.post_image("/predict", image, category="brick")[1]["score"]
        data = (run / "brick.safetensors").read_bytes()
        if breakage == "truncated":
            bad = data[:len(data) // 2]
        else:                                       # a header whose k contradicts its arrays
            n = int.from_bytes(data[:8], "little")
            header = data[8:8 + n].replace(b'\\"k\\": 20', b'\\"k\\": 21')
            assert header != data[8:8 + n]
            bad = len(header).to_bytes(8, "little") + header + data[8 + n:]
        (run / ".bad").write_bytes(bad)
        os.replace(run / ".bad", run / "brick.safetensors")
        deadline = time.time() + 30
        while time.time() < deadline and "brick" not in srv.get("/models")[1]["failed"]:
            time.sleep(0.2)
        assert "brick" in srv.get("/models")[1]["failed"]
        health = srv.get("/health")
        assert health[0] == 200 and health[1]["failed"] == 1
        s, b, _ = srv.post_image("/predict", image, category="brick")
        assert s == 200 and b["score"] == pytest.approx(before, rel=1e-6)
    finally:
        srv.stop()


def test_sigterm_drains_the_requests_in_flight(models):
    """serve.py's own process on the run folder (model files: Paddle is loaded, and with it its
    SIGTERM handler) with a slow engine stand-in (1 s a batch, tests/slow_app.py): requests are
    in flight (the queue gauge says so) when SIGTERM comes; they all complete with 200, a new
    connection is refused, and the process exits 0."""
    srv = Server(models["run"], script=os.path.join(ROOT, "tests", "slow_app.py"),
                 env={"SLOW_APP_SECONDS": "1.5"})
    f = models["images"][0]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(srv.post_image, "/predict", f, category="brick")
                   for _ in range(6)]
        deadline = time.time() + 20
        depth = 0.0
        while time.time() < deadline and depth < 1:
            depth = float(next(line.split()[-1] for line in srv.get("/metrics")[1].splitlines()
                               if line.startswith("orthoad_queue_depth")))
            time.sleep(0.05)
        assert depth >= 1                                   # requests are in flight
        srv.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        with pytest.raises(OSError):                        # no new connection is accepted
            socket.create_connection(("127.0.0.1", srv.port), timeout=2).close()
        statuses = [fu.result()[0] for fu in futures]
    assert srv.proc.wait(60) == 0
    assert statuses == [200] * 6
    assert "RANDOM weights" in srv.text()            # the model files loaded Paddle


def test_pixel_bombs_are_refused_from_their_header_and_memory_stays_bounded(models):
    """Six concurrent 13000 x 13000 PNGs (169 megapixels, under PIL's own limit): each 413
    within 5 s, naming the limit, and the server's peak RSS grows by at most 512 MiB; a
    4096 x 3072 camera frame is still scored."""
    srv = Server(models["exports"], "--max_body_mb", "8")
    try:
        bomb = png_bomb(13000, 13000)
        assert len(bomb) < 1 << 20
        srv.post_image("/predict", models["images"][0], category="brick")      # warm
        before = srv.peak_rss()

        def send(_):
            t = time.perf_counter()
            s, b, _ = srv.request("POST", "/predict?category=brick", bomb,
                                  {"Content-Type": "image/png"})
            return s, b, time.perf_counter() - t
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(send, range(6)))
        for s, b, seconds in answers:
            assert s == 413 and "13000x13000 = 169.0 megapixels" in b["error"] and \
                "--max_pixels" in b["error"], b
            assert seconds < 5
        assert srv.peak_rss() - before <= 512 << 20
        frame = io.BytesIO()
        Image.fromarray(np.full((3072, 4096, 3), 128, np.uint8)).save(frame, format="PNG")
        s, b, _ = srv.request("POST", "/predict?category=brick", frame.getvalue(),
                              {"Content-Type": "image/png"})
        assert s == 200 and (b["width"], b["height"]) == (4096, 3072)
    finally:
        srv.stop()


def test_admission_counts_the_memory_of_decoded_images(models):
    """With a budget for about one 2000 x 2000 image (24 bytes a pixel: 92 MiB), concurrent
    ones beyond it get 503 with Retry-After naming the memory, and small ones still pass."""
    srv = Server(models["exports"], "--memory_budget_mb", "100", "--max_wait_ms", "20")
    try:
        big = io.BytesIO()
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (2000, 2000, 3), np.uint8)
                        ).save(big, format="PNG", compress_level=1)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: srv.request(
                "POST", "/predict?category=brick", big.getvalue(),
                {"Content-Type": "image/png"}), range(8)))
        statuses = sorted(a[0] for a in answers)
        assert 200 in statuses and 503 in statuses, statuses
        busy = next(a for a in answers if a[0] == 503)
        assert "image memory budget" in busy[1]["error"] and busy[2].getheader("Retry-After")
        assert srv.post_image("/predict", models["images"][0], category="brick")[0] == 200
    finally:
        srv.stop()


def test_api_keys_guard_predict_models_and_metrics(models, tmp_path):
    """With --api_key_file: 401 without the key or with a wrong one, 200 with it; /health open
    either way; a key added to the file works without a restart, a removed one stops; /models
    shows file names, never absolute paths; the keys are never logged."""
    keys = tmp_path / "keys.txt"
    first, second = "k" * 20 + "first", "k" * 20 + "second"
    keys.write_text(f"# service keys\n{first}\n")
    srv = Server(models["run"], "--api_key_file", str(keys))
    try:
        f = models["images"][0]
        assert srv.get("/health")[0] == 200
        s, b, r = srv.post_image("/predict", f, category="brick")
        assert s == 401 and "Authorization: Bearer" in b["error"]
        assert r.getheader("WWW-Authenticate") == "Bearer"
        for path in ("/models", "/metrics"):
            assert srv.get(path)[0] == 401
            assert srv.get(path, {"Authorization": "Bearer wrong-key-of-some-length"})[0] == 401
            assert srv.get(path, {"Authorization": f"Bearer {first}"})[0] == 200
        with open(f, "rb") as fh:
            data = fh.read()
        ok = {"Content-Type": "image/png", "Authorization": f"Bearer {first}"}
        assert srv.request("POST", "/predict?category=brick", data, ok)[0] == 200
        info = srv.get("/models", {"Authorization": f"Bearer {first}"})[1]
        text = json.dumps(info)
        assert str(models["run"]) not in text and "model_dir" not in info
        assert info["models"]["brick"]["source"]["path"] == "brick.safetensors"
        keys.write_text(f"{second}\n")                     # rotate: first out, second in
        time.sleep(1.5)
        assert srv.request("POST", "/predict?category=brick", data, ok)[0] == 401
        ok["Authorization"] = f"Bearer {second}"
        assert srv.request("POST", "/predict?category=brick", data, ok)[0] == 200
        assert first not in srv.text() and second not in srv.text()
    finally:
        srv.stop()


def test_slow_senders_hold_no_slot_and_a_normal_request_is_answered(models):
    """16 clients that announce a body and trickle it (or stall): a normal request meanwhile is
    answered within 2 s, and each slow one gets 408 after --read_timeout."""
    srv = Server(models["exports"], "--read_timeout", "3", "--max_queue", "4")
    socks = []
    try:
        for _ in range(16):
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
            s.sendall(b"POST /predict?category=brick HTTP/1.1\r\nHost: x\r\n"
                      b"Content-Type: image/png\r\nContent-Length: 100000\r\n\r\n\x89PNG")
            socks.append(s)
        time.sleep(0.5)
        t = time.perf_counter()
        s, b, _ = srv.post_image("/predict", models["images"][0], category="brick")
        assert s == 200 and time.perf_counter() - t < 2
        answers = []
        for sock in socks:
            sock.settimeout(10)
            try:
                answers.append(sock.recv(200).split(b" ")[1])
            except OSError:
                answers.append(b"closed")
        assert answers.count(b"408") >= 14, answers
    finally:
        for sock in socks:
            sock.close()
        srv.stop()


def test_detector_and_predict_refuse_huge_files_from_their_header(models, tmp_path):
    """The same pixel budget in the Python API and in predict.py: a huge file is refused from
    its header (one line), before it is decoded."""
    from orthoad_runtime.transforms import TooManyPixels
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "huge.png").write_bytes(png_bomb(9000, 9000))
    det = Detector.from_export(str(models["exports"] / "brick"))
    det.max_pixels = 4096 * 3072
    with pytest.raises(TooManyPixels, match="9000x9000 = 81.0 megapixels"):
        det.predict(str(tmp_path / "in" / "huge.png"))
    r = run_script("predict.py", str(tmp_path / "in"), "--model_path",
                   str(models["run"] / "brick.safetensors"), "--max_pixels", "12582912",
                   "--output", str(tmp_path / "out"))
    assert r.returncode == 2 and "81.0 megapixels, above the limit of 12.6" in r.stderr


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
        want = from_model_file(str(models["run"] / "brick.safetensors")).predict(image)
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
    from orthoad_runtime.figure import _eroded
    rng = np.random.default_rng(0)
    for steps in (1, 2, 3):
        m = rng.random((40, 50)) < 0.7
        np.testing.assert_array_equal(_eroded(m, steps), ndimage.binary_erosion(m, iterations=steps))
