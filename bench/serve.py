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


def png_bomb(width, height):
    """A valid RGB PNG of ``width`` x ``height`` black pixels, compressed row by row, never held
    decoded (13000 x 13000: 0.5 MB on the wire, 507 MB decoded, under PIL's own limit)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + \
            struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    comp, parts = zlib.compressobj(9), []
    row = b"\x00" * (1 + 3 * width)
    for start in range(0, height, 256):
        parts.append(comp.compress(row * min(256, height - start)))
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts)) + \
        chunk(b"IEND", b"")


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
from orthoad_runtime import Detector
d = Detector.from_export({export!r}, threads={threads})
p = [d.prepare(f) for f in {files[:8]!r}]
out = {{}}
for b in (1, 8):
    x = p[:b]
    d.score(x)
    ts = []
    for _ in range(20):
        t = time.perf_counter(); d.score(x); ts.append(time.perf_counter() - t)
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


def _slow_sender(port, hold_s):
    """A client that announces a 100 kB body, sends 4 bytes, then stalls; returns the status
    the server answered (or 0 if it only closed)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=hold_s + 30)
    try:
        s.sendall(b"POST /predict?category=brick HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Type: image/png\r\nContent-Length: 100000\r\n\r\n\x89PNG")
        data = s.recv(64)
        return int(data.split(b" ")[1]) if data.startswith(b"HTTP/") else 0
    except OSError:
        return 0
    finally:
        s.close()


def bench_soak(work, n_requests=10000, clients=16, read_timeout=2.0):
    """``n_requests`` requests from ``clients`` kept-alive clients, mixed: 70 % good images, 10 %
    garbage bytes, 5 % 13000 x 13000 PNG bombs, 10 % an unknown category, and 5 % slow senders
    (a separate pool of 8, each stalling until --read_timeout); the server's peak RSS, the
    answers by status and the p50 / p99 latency of the good answers."""
    m = prepared_model(work)
    model_dir = os.path.dirname(m["exports"]["onnx"])
    good = [open(f, "rb").read() for f in m["images"]]
    rng = np.random.default_rng(0)
    garbage = [rng.integers(0, 255, 2000, dtype=np.uint8).tobytes() for _ in range(4)]
    bomb = png_bomb(13000, 13000)
    kinds = rng.choice(["good", "garbage", "bomb", "category", "slow"], n_requests,
                       p=[0.70, 0.10, 0.05, 0.10, 0.05])
    srv = _Service(model_dir, "--read_timeout", str(read_timeout))
    lat, statuses, lock = [], {}, threading.Lock()
    queue = [k for k in kinds if k != "slow"]
    n_slow = int((kinds == "slow").sum())

    def count(code):
        with lock:
            statuses[code] = statuses.get(code, 0) + 1

    def client(i):
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=120)
        for j in range(i, len(queue), clients):
            kind = queue[j]
            body = {"good": good[j % len(good)], "garbage": garbage[j % 4], "bomb": bomb,
                    "category": good[0]}[kind]
            cat = "nothere" if kind == "category" else "brick"
            t = time.perf_counter()
            try:
                conn.request("POST", f"/predict?category={cat}", body,
                             {"Content-Type": "image/png"})
                r = conn.getresponse()
                r.read()
                code = r.status
            except OSError:
                code = 0
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=120)
            if kind == "good" and code == 200:
                with lock:
                    lat.append(time.perf_counter() - t)
            count(f"{kind} {code}")
        conn.close()

    def slow(_):
        count(f"slow {_slow_sender(srv.port, read_timeout)}")
    rss0 = srv.rss()
    try:
        t = time.perf_counter()
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(8) as slow_pool:
            slow_futures = [slow_pool.submit(slow, i) for i in range(n_slow)]
            threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            for f in slow_futures:
                f.result()
        wall = time.perf_counter() - t
        lat = np.array(lat)
        out = {"requests": n_requests, "clients": clients, "read_timeout_s": read_timeout,
               "wall_s": wall, "statuses": dict(sorted(statuses.items())),
               "good_p50_ms": 1000 * float(np.percentile(lat, 50)),
               "good_p99_ms": 1000 * float(np.percentile(lat, 99)),
               "rss_before_mib": rss0, "rss_after_mib": srv.rss(),
               "peak_mib": srv.rss("VmHWM")}
    finally:
        out_status = srv.stop()
    out["exit_status"] = out_status
    return out
