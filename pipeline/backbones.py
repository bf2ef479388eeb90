"""The frozen backbone of a run: built once per process for each set of weights, rebuilt from a
model file's record, and refused if its weights differ from those the model was fitted with."""
import os

import numpy as np

from modelfile import read_tensors, safe_unpickle
from schema import trusted_path
from models.backbone import Backbone
from utils import UserError

_CACHE = {}


def read_weights_file(path):
    """A local backbone weights file -> state dict {name: ndarray}, without running code from it.

    Accepts a ``paddle.save`` state dict (.pdparams, read by an unpickler that builds arrays only)
    or a .safetensors file.
    """
    if not os.path.isfile(path):
        raise UserError(f"--weights file '{path}' does not exist: give the path of a backbone "
                        ".pdparams or .safetensors file")
    if path.endswith(".safetensors"):
        return read_tensors(path)[1]
    state = safe_unpickle(path)
    if not isinstance(state, dict):
        raise UserError(f"--weights '{path}' is not a state dict: give a file saved by "
                        "paddle.save(model.state_dict(), ...)")
    return {k: v for k, v in state.items() if isinstance(v, np.ndarray)}


def weights_key(arch, pretrained=True, weights=None, seed=0):
    """What identifies a backbone's weights: the seed matters only for random weights, the
    pretrained flag only without a weights file."""
    if weights:
        return arch, "file", os.path.abspath(weights)
    if pretrained:
        return arch, "imagenet"
    return arch, "random", int(seed)


def get_backbone(arch, pretrained=True, weights=None, seed=0):
    """Build (once per process for the same weights) the frozen backbone."""
    key = weights_key(arch, pretrained, weights, seed)
    if key not in _CACHE:
        if weights:
            _CACHE[key] = Backbone(arch, state=read_weights_file(weights),
                                   source=f"file:{os.path.abspath(weights)}")
        else:
            _CACHE[key] = Backbone(arch, pretrained=pretrained, seed=seed)
    return _CACHE[key]


def backbone_for_meta(meta, weights=None):
    """Rebuild the backbone a model was fitted with and check its weights' fingerprint."""
    source = meta["weights_source"]
    if weights:
        bb = get_backbone(meta["arch"], False, weights)
    elif source.startswith("imagenet"):
        bb = get_backbone(meta["arch"], True)
    elif source.startswith("file:"):
        path = trusted_path(source[len("file:"):], "file",
                            "pass --weights with the backbone weights the model was fitted with")
        bb = get_backbone(meta["arch"], False, path)
    else:
        bb = get_backbone(meta["arch"], False, None, int(source.split("seed=")[1]))
    if bb.weights_sha256 != meta["weights_sha256"]:
        raise UserError(f"the backbone weights ({bb.weights_source}) differ from those the model "
                        f"was fitted with ({source}): pass --weights with the original file")
    return bb
