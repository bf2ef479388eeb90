"""Model files hold data only: the safetensors library is the oracle of the layout, and a crafted
pickle never runs code in any script that can be handed a file."""
import json
import os
import pickle

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import modelfile
from conftest import run_script
from modelfile import ModelFileError, load_model, read_tensors, write_tensors
from utils import UserError, model_path


def _arrays(rng):
    return {"projection": rng.standard_normal((448, 6)).astype(np.float32),
            "mean": rng.standard_normal((64, 6)).astype(np.float32),
            "precision": rng.standard_normal((64, 6, 6)).astype(np.float32),
            "sums": rng.standard_normal((64, 21)),
            "count": np.array([7], np.int64)}


def test_our_files_and_the_safetensors_library_read_each_other(tmp_path):
    rng = np.random.default_rng(0)
    arrays = _arrays(rng)
    write_tensors(str(tmp_path / "a.safetensors"), arrays, {"meta": "{}"})
    theirs = load_file(str(tmp_path / "a.safetensors"))
    assert sorted(theirs) == sorted(arrays)
    for name, a in arrays.items():
        assert theirs[name].dtype == a.dtype
        np.testing.assert_array_equal(theirs[name], a)
    save_file(arrays, str(tmp_path / "b.safetensors"), metadata={"x": "y"})
    meta, ours = read_tensors(str(tmp_path / "b.safetensors"))
    assert meta == {"x": "y"}
    for name, a in arrays.items():
        np.testing.assert_array_equal(ours[name], a)


def test_truncated_and_foreign_files_are_refused(tmp_path):
    arrays = _arrays(np.random.default_rng(1))
    path = str(tmp_path / "m.safetensors")
    modelfile.save_model(path, {"k": 6}, arrays)
    data = open(path, "rb").read()
    (tmp_path / "cut.safetensors").write_bytes(data[:-10])
    with pytest.raises(ModelFileError, match="is truncated"):
        load_model(str(tmp_path / "cut.safetensors"))
    save_file(arrays, str(tmp_path / "other.safetensors"))
    with pytest.raises(ModelFileError, match="not an OrthoAD-Paddle model file"):
        load_model(str(tmp_path / "other.safetensors"))
    (tmp_path / "text.safetensors").write_text("hello, not a model")
    with pytest.raises(ModelFileError, match="not a readable model file"):
        load_model(str(tmp_path / "text.safetensors"))
    meta, back = load_model(path)
    assert meta == {"k": 6} and back["count"].tolist() == [7]


def _format1(path, arrays, meta):
    """A model file exactly as format 1 wrote it: a protocol-5 pickle of a dict."""
    record = {"format_version": 1, "meta": json.dumps(meta)}
    record.update({n: arrays[n] for n in modelfile.REQUIRED_ARRAYS})
    with open(path, "wb") as fh:
        pickle.dump(record, fh, protocol=5)


def test_format1_file_is_refused_and_converts_to_the_same_model(tmp_path):
    arrays = _arrays(np.random.default_rng(2))
    old = str(tmp_path / "brick.pdparams")
    _format1(old, arrays, {"category": "brick", "k": 6})
    with pytest.raises(ModelFileError, match=r"python convert_model.py .*brick.pdparams"):
        load_model(old)
    with pytest.raises(ModelFileError, match=r"'.*brick.pdparams' does"):   # the derived path
        load_model(str(tmp_path / "brick.safetensors"))
    r = run_script("convert_model.py", old)
    assert r.returncode == 0, r.stderr[-2000:]
    meta, back = load_model(str(tmp_path / "brick.safetensors"))
    assert meta["category"] == "brick" and meta["converted_from"] == "brick.pdparams"
    for name in modelfile.REQUIRED_ARRAYS:
        np.testing.assert_array_equal(back[name], arrays[name])


class _Evil:
    """Unpickling this calls os.system: the payload every script must refuse to run."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def evil(tmp_path_factory):
    root = tmp_path_factory.mktemp("evil")
    marker = root / "code_ran"
    path = root / "brick.pdparams"
    path.write_bytes(pickle.dumps({"format_version": 1, "meta": "{}", "projection": _Evil(marker),
                                   "mean": _Evil(marker), "precision": _Evil(marker)},
                                  protocol=4))
    pickle.loads(path.read_bytes())                    # the payload works when unpickled...
    assert marker.exists()
    marker.unlink()                                    # ...and every script below must refuse it
    return {"path": path, "marker": marker, "root": root}


@pytest.mark.parametrize("script", ["eval", "predict", "export_model", "infer", "convert_model",
                                    "train_weights"])
def test_a_crafted_pickle_runs_no_code(script, evil, demo_root, tmp_path):
    f = str(evil["path"])
    image = os.path.join(demo_root, "brick", "test", "good", "000.png")
    args = {
        "eval": ("eval.py", "--data_path", demo_root, "--category", "brick", "--model_path", f),
        "predict": ("predict.py", image, "--model_path", f),
        "export_model": ("export_model.py", "--model_path", f, "--save_dir", str(tmp_path)),
        "infer": ("infer.py", "--model_file", f, "--params_file", f, "--stats", f,
                  "--input_file", image),
        "convert_model": ("convert_model.py", f, "--out", str(tmp_path / "x.safetensors")),
        "train_weights": ("train.py", "--data_path", demo_root, "--category", "brick",
                          "--weights", f, "--save_path", str(tmp_path)),
    }[script]
    r = run_script(*args)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [line for line in r.stderr.strip().splitlines() if "error:" in line]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "pickle" in lines[0] or "other than arrays" in lines[0], lines[0]
    assert not evil["marker"].exists()
    assert not any(f.endswith(".safetensors") for _, _, fs in os.walk(tmp_path) for f in fs)


def test_safe_unpickle_reads_paddle_state_dicts(tmp_path):
    import paddle
    net = paddle.nn.Linear(3, 2)
    paddle.save(net.state_dict(), str(tmp_path / "w.pdparams"))
    state = modelfile.safe_unpickle(str(tmp_path / "w.pdparams"))
    np.testing.assert_array_equal(state["weight"], net.weight.numpy())
    (tmp_path / "other.pkl").write_bytes(pickle.dumps({"w": UserError("an object")}))
    with pytest.raises(UserError, match="other than arrays"):
        modelfile.safe_unpickle(str(tmp_path / "other.pkl"))


def test_weights_file_builds_one_backbone_whatever_the_seed(demo_root, tmp_path, monkeypatch):
    """train.py --eval --seed 1 with --weights: the seed does not matter for file weights, and
    the evaluation uses the backbone of the fit (one construction, not two)."""
    import paddle

    import train
    from models.backbone import Backbone
    from pipeline import backbones
    weights = str(tmp_path / "r18.pdparams")
    paddle.seed(5)
    net = paddle.vision.models.resnet18(pretrained=False)
    paddle.save(net.state_dict(), weights)
    built = []

    class Counting(Backbone):
        def __init__(self, *a, **kw):
            built.append(kw.get("source"))
            super().__init__(*a, **kw)
    monkeypatch.setattr(backbones, "Backbone", Counting)
    monkeypatch.setattr(backbones, "_CACHE", {})
    rows = train.main(train.get_args(["--data_path", demo_root, "--category", "gravel", "--k",
                                      "4", "--resize", "64", "--crop_size", "64", "--weights",
                                      weights, "--seed", "1", "--eval", "--save_path",
                                      str(tmp_path / "o")]))
    assert built == [f"file:{os.path.abspath(weights)}"] and rows[0]["image_auroc"] is not None
    meta, _ = load_model(model_path(str(tmp_path / "o"), "ortho", "resnet18", 4, "gravel"))
    assert meta["weights_source"] == f"file:{os.path.abspath(weights)}"
    assert backbones.weights_key("resnet18", True, weights, 0) == \
        backbones.weights_key("resnet18", False, weights, 3)
    assert backbones.weights_key("resnet18", True, None, 0) == \
        backbones.weights_key("resnet18", True, None, 1)
