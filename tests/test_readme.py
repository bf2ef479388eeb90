"""The README is true: its commands for the demo data run as written, in the order a user meets
them, after the demo itself (run_demo.sh's commands); the demo prints the table the README
shows; the flags reference equals the parsers.

The one change to the commands: train.py gets --no-pretrained (the ImageNet weights cannot be
downloaded where the tests run; the demo's models are random-weight models too). Commands that
name a user's data (PATH/TO/...) are left out. ``serve.py`` runs in the background until the
README's curl command has had its answer.
"""
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from conftest import ROOT

README = os.path.join(ROOT, "README.md")
KEEP_OUT = {".git", ".venv", ".venv-deploy", ".venv-gpu", "output", "demo_data", "demo_parts",
            "demo_calib", "export", "test_tipc"}


def readme_commands(text):
    """('shell', line) for every `python ...` / `curl ...` / `orthoad-infer ...` /
    `orthoad-serve ...` line of the indented code blocks (the installed commands run as the
    repository's infer.py / serve.py, the same code) and ('python', code) for every ```python
    block, in order; user-data commands left out."""
    out, fence = [], None
    for line in text.splitlines():
        if fence is not None:
            if line.startswith("```"):
                out.append(("python", "\n".join(fence)))
                fence = None
            else:
                fence.append(line)
            continue
        if line.startswith("```python"):
            fence = []
        elif re.match(r"^    (python|curl|orthoad-infer|orthoad-serve) ", line):
            cmd = line[4:].split("  #")[0].strip()
            cmd = re.sub(r"^orthoad-(infer|serve) ", r"python \1.py ", cmd)
            if "PATH/TO" not in cmd:
                out.append(("shell", cmd))
    return out


def demo_commands():
    """run_demo.sh's commands after the install, with this interpreter."""
    text = open(os.path.join(ROOT, "run_demo.sh")).read().replace("\\\n", " ")
    return [line.replace(".venv/bin/python", "python").replace('"$@"', "").strip()
            for line in text.splitlines() if line.startswith(".venv/bin/python")]


def _free_port(preferred):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]


def _run(argv, cwd, timeout=600):
    if argv[0] == "python":
        argv = [sys.executable, *argv[1:]]
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, PYTHONWARNINGS="ignore"))


def _table(text, header):
    """{category: [numbers]} of the printed table that starts with ``header``'s columns."""
    rows, on = {}, False
    for line in text.splitlines():
        words = line.split()
        if words[:2] == header:
            on = True
        elif on and words and re.match(r"^-?[\d.]+$", words[-1]):
            rows[words[0]] = [float(w) if w != "n/a" else None for w in words[1:]]
        elif on:
            break
    return rows


def test_flags_reference_equals_the_parsers():
    r = subprocess.run([sys.executable, "tools/flags_reference.py", "--check"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


def test_flags_that_had_two_meanings_have_one():
    """--stats was where train.py computes its statistics and infer.py's deploy.json;
    --save_maps was eval.py's float32 maps and predict.py's AD 2 server maps: each name now has
    one meaning in every script that takes it (the former uses answer with the new names)."""
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import flags_reference as ref
    meanings = ref.meanings([ref.parser_of(m) for m, _, _ in ref.SCRIPTS])
    assert len(meanings["--stats"]) == 1 and list(meanings["--stats"].values()) == [["infer.py"]]
    assert len(meanings["--save_maps"]) == 1
    assert sorted(next(iter(meanings["--save_maps"].values()))) == ["eval.py", "train.py"]


def test_readme_commands_run_as_written(tmp_path):
    work = tmp_path / "clone"
    work.mkdir()
    for name in os.listdir(ROOT):
        if name not in KEEP_OUT:
            os.symlink(os.path.join(ROOT, name), work / name)
    readme = open(README, encoding="utf-8").read()

    demo_out = ""
    for cmd in demo_commands():
        r = _run(shlex.split(cmd), work)
        assert r.returncode == 0, f"{cmd}\n{r.stderr[-2000:]}"
        demo_out += r.stdout
    # the demo's table in the README is what the demo prints (4 decimals; 1e-3 for BLAS order)
    header = ["category", "n_test"]
    shown, printed = _table(readme, header), _table(demo_out, header)
    assert shown and set(shown) == set(printed), (shown, printed)
    for category, values in shown.items():
        assert printed[category] == pytest.approx(values, abs=1e-3), category

    commands = readme_commands(readme)
    assert len(commands) >= 8, commands
    server, port = None, _free_port(8000)
    try:
        for kind, cmd in commands:
            if kind == "python":
                r = _run(["python", "-c", cmd], work)
                assert r.returncode == 0, f"{cmd}\n{r.stderr[-2000:]}"
                assert "anomalous" in r.stdout, r.stdout
                continue
            argv = shlex.split(cmd.replace(":8000", f":{port}"))
            if argv[:2] == ["python", "serve.py"]:
                argv[argv.index("--port") + 1] = str(port)
                server = subprocess.Popen([sys.executable, *argv[1:]], cwd=work,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                _wait_ready(server, port)
                continue
            if argv[0] == "curl":
                body = _curl(argv, work)
                assert body["verdict"] in ("anomalous", "normal") and "regions" in body, body
                continue
            if argv[1] == "train.py" and "--weights" not in argv:
                argv.append("--no-pretrained")
            r = _run(argv, work)
            assert r.returncode == 0, f"{cmd}\n{r.stderr[-2000:]}"
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=60)
    # what the README says these commands leave behind
    for path in ("output/ortho_resnet18_k100/part.safetensors", "export/brick/deploy.json",
                 "output/line/predictions.csv", "output/line/regions/000.json",
                 "output/line/masks/000.png", "output/line/000.png"):
        assert (work / path).is_file(), path
    record = json.loads((work / "output/line/regions/002.json").read_text())
    shown = readme[readme.index('"outputs_version": 2, "image"'):]
    for key in ("score", "n_regions", "largest_region_area"):
        value = re.search(rf'"{key}": ([\d.]+)', shown).group(1)
        assert record[key] == pytest.approx(float(value), rel=1e-3), key


def _wait_ready(server, port, timeout=120):
    end = time.time() + timeout
    while time.time() < end:
        if server.poll() is not None:
            raise AssertionError(f"serve.py exited: {server.stderr.read()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError("serve.py did not become ready")


def _curl(argv, cwd):
    """The README's curl command; where curl is missing, the same POST with urllib."""
    if shutil.which("curl"):
        r = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)
    data = next(a for a in argv if a.startswith("@"))[1:]
    url = next(a for a in argv if a.startswith("http"))
    with open(os.path.join(cwd, data), "rb") as fh:
        req = urllib.request.Request(url, data=fh.read(), method="POST")
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())
