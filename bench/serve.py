"""The service under load, on loopback: a bounded number of requests from 1, 4 and 16
concurrent clients (throughput, p50 / p99 latency, batch sizes, the server's memory), a long run
for memory growth, an overload run that must end in 503s, 1 against 2 workers, all against the
engine's own per-image time and infer.py --batch_size 8 on the same images, in one run.

Clients and server share this machine's CPUs (2 cores here): the figures include the clients'
own cost."""
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np

from .common import ROOT, prepared_model, rss_mib


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Service:
    def __init__(self, model_dir, *extra):
        self.port = _free_port()
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "serve.py"), "--model_dir", model_dir,
             "--port", str(self.port), "--reload_interval", "0", *extra], cwd=ROOT,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        t = time.perf_counter()
        while time.perf_counter() - t < 120:
            try:
                if self.get("/health")[0] == 200:
                    self.ready_s = time.perf_counter() - t
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("the service did not start")

    def get(self, path):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read().decode()

    def batches(self):
        text = self.get("/metrics")[1]
        total = float(re.search(r"^orthoad_batch_size_sum (\S+)", text, re.M).group(1))
        count = float(re.search(r"^orthoad_batch_size_count (\S+)", text, re.M).group(1))
        return total, count

    def pids(self):
        """The server's process and its worker processes."""
        out = [self.proc.pid]
        try:
            kids = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True,
                                  text=True).stdout.split()
            out += [int(k) for k in kids]
        except OSError:
            pass
        return out

    def rss(self, field="VmRSS"):
        return sum(rss_mib(p, field) for p in self.pids())

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)


def _load(port, bodies, clients, per_client):
    """``clients`` threads, each with one kept-alive connection, ``per_client`` requests each;
    returns (wall seconds, latencies in s, status counts)."""
    lat, statuses, lock = [], {}, threading.Lock()

    def client(i):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        mine, codes = [], {}
        for j in range(per_client):
            body = bodies[(i * per_client + j) % len(bodies)]
            t = time.perf_counter()
            conn.request("POST", "/predict?category=brick", body,
                         {"Content-Type": "image/png"})
            r = conn.getresponse()
            r.read()
            mine.append(time.perf_counter() - t)
            codes[r.status] = codes.get(r.status, 0) + 1
            if r.getheader("Connection", "").lower() == "close":
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        conn.close()
        with lock:
            lat.extend(mine)
            for k, v in codes.items():
                statuses[k] = statuses.get(k, 0) + v
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return time.perf_counter() - t, np.array(lat), statuses


def _engine_ms(export, files, threads=2):
    """The ONNX graph's own ms per image at batch 1 and 8 (median of 20 runs), in a fresh
    process like the server's."""
    code = f"""
import json, time, numpy as np
from runtime.detector import Detector
d = Detector.load({export!r}, threads={threads})
p = [d.prepare(f) for f in {files[:8]!r}]
out = {{}}
for b in (1, 8):
    x = np.stack([q.x for q in p[:b]])
    d._run(x)
    ts = []
    for _ in range(20):
        t = time.perf_counter(); d._run(x); ts.append(time.perf_counter() - t)
    out[b] = 1000 * float(np.median(ts)) / b
print(json.dumps(out))
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       check=True)
    return {int(k): v for k, v in json.loads(r.stdout.strip().splitlines()[-1]).items()}


def _infer_img_s(export, flat, batch=8, threads=2):
    r = subprocess.run([sys.executable, "infer.py", "--model_file",
                        os.path.join(export, "model.onnx"), "--input_file", flat,
                        "--save_path", os.path.join(os.path.dirname(flat), "infer_bench"),
                        "--save_pic", "false", "--batch_size", str(batch), "--cpu_threads",
                        str(threads), "--enable_benchmark"], cwd=ROOT, capture_output=True,
                       text=True, check=True)
    return float(re.search(r"([\d.]+) img/s", r.stdout).group(1))


def bench_serve(work, requests=(200, 400, 800), long_requests=2000, workers=(1, 2)):
    """The load-test figures (see the module docstring)."""
    m = prepared_model(work)
    export = m["exports"]["onnx"]
    model_dir = os.path.dirname(export)
    bodies = [open(f, "rb").read() for f in m["images"]]
    out = {"engine_ms": _engine_ms(export, m["images"]),
           "infer_b8_img_s": _infer_img_s(export, m["flat"]), "levels": [], "workers": []}
    srv = _Service(model_dir)
    out["ready_s"] = srv.ready_s
    try:
        _load(srv.port, bodies, 4, 10)                                   # warm-up
        for clients, n in zip((1, 4, 16), requests):
            before = srv.batches()
            wall, lat, codes = _load(srv.port, bodies, clients, n // clients)
            after = srv.batches()
            out["levels"].append({
                "clients": clients, "requests": len(lat), "img_s": len(lat) / wall,
                "p50_ms": 1000 * float(np.percentile(lat, 50)),
                "p99_ms": 1000 * float(np.percentile(lat, 99)),
                "mean_batch": (after[0] - before[0]) / max(1.0, after[1] - before[1]),
                "statuses": codes, "rss_mib": srv.rss()})
        rss0 = srv.rss()
        wall, lat, codes = _load(srv.port, bodies, 16, long_requests // 16)
        out["long"] = {"requests": len(lat), "img_s": len(lat) / wall, "statuses": codes,
                       "rss_before_mib": rss0, "rss_after_mib": srv.rss(),
                       "peak_mib": srv.rss("VmHWM"),
                       "p99_ms": 1000 * float(np.percentile(lat, 99))}
    finally:
        out["exit_status"] = srv.stop()
    srv = _Service(model_dir, "--max_queue", "8")
    try:
        rss0 = srv.rss()
        wall, lat, codes = _load(srv.port, bodies, 64, 10)
        out["overload"] = {"clients": 64, "requests": len(lat), "max_queue": 8,
                           "statuses": codes, "rss_before_mib": rss0,
                           "rss_after_mib": srv.rss(), "img_s_answered_200":
                               codes.get(200, 0) / wall}
    finally:
        srv.stop()
    for n in workers:
        srv = _Service(model_dir, "--workers", str(n), "--cpu_threads", str(max(1, 2 // n)))
        try:
            _load(srv.port, bodies, 8, 4)
            wall, lat, codes = _load(srv.port, bodies, 16, 400 // 16)
            out["workers"].append({"workers": n, "threads_each": max(1, 2 // n),
                                   "img_s": len(lat) / wall,
                                   "p50_ms": 1000 * float(np.percentile(lat, 50)),
                                   "p99_ms": 1000 * float(np.percentile(lat, 99)),
                                   "rss_mib": srv.rss(), "statuses": codes})
        finally:
            srv.stop()
    return out
