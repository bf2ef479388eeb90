"""Frozen ImageNet ResNet feature extractor (stem + layer1..layer3).

OrthoAD (Kim et al., "Semi-Orthogonal Embedding for Efficient Unsupervised Anomaly
Segmentation", MICCAI 2021, https://arxiv.org/abs/2105.14737) and PaDiM
(Defard et al., ICPR 2020) both describe a patch at grid position (i, j) by the concatenation
[layer1 | up2(layer2) | up4(layer3)] of a frozen ResNet's feature maps.

This module only returns the three layer maps; the projection is applied per layer
(see ``models.orthoad``) because a channel projection commutes with nearest upsampling.
"""
import hashlib
import logging

import numpy as np
import paddle
import paddle.nn as nn
from paddle.vision import models as vision_models

from utils import UserError

from .archs import CHANNELS, feature_dim as _feature_dim

logger = logging.getLogger(__name__)

# arch name -> (constructor, channels of layer1, layer2, layer3)
ARCHS = {
    "resnet18": (vision_models.resnet18, CHANNELS["resnet18"]),
    "wide_resnet50_2": (vision_models.wide_resnet50_2, CHANNELS["wide_resnet50_2"]),
}


def feature_dim(arch):
    """Number of channels F of the concatenated embedding of ``arch``."""
    get_arch(arch)
    return _feature_dim(arch)


def get_arch(arch):
    if arch not in ARCHS:
        raise UserError(f"unknown arch '{arch}': choose one of {', '.join(sorted(ARCHS))}")
    return ARCHS[arch]


def _build_resnet(arch, pretrained, state, source, seed):
    """Build the ResNet and describe which weights it holds.

    Returns (net, source) where source is a human-readable string recorded in the model file.
    """
    ctor, _ = get_arch(arch)
    if state is not None:
        net = ctor(pretrained=False)
        missing, unexpected = _check_state(net, state)
        if missing:
            raise UserError(f"the weights {source} do not fit {arch}: {len(missing)} "
                            f"parameters missing (e.g. '{missing[0]}'); pass the weights of {arch}")
        bad = _mismatch(net, state)
        if bad:
            raise UserError(f"the weights {source} do not fit {arch}: {bad}; pass the weights "
                            f"of {arch}")
        net.set_state_dict({k: v for k, v in state.items() if k not in unexpected})
        return net, source
    if pretrained:
        try:
            net = ctor(pretrained=True)
        except Exception as exc:
            raise UserError(
                f"could not load Paddle's ImageNet weights for {arch} "
                f"({type(exc).__name__}: {str(exc).splitlines()[0][:120]}): connect to the "
                f"internet once, or pass --weights PATH to a local {arch} .pdparams, or "
                "--no-pretrained for random weights (tests only)") from None
        return net, "imagenet:paddle.vision"
    paddle.seed(seed)
    net = ctor(pretrained=False)
    return net, f"random:seed={seed}"


def _mismatch(net, state):
    """The first tensor whose shape or dtype differs from the network's (Paddle's
    set_state_dict only warns and leaves it random), described; None if all match."""
    for name, t in net.state_dict().items():
        given = np.asarray(state[name])
        want_dtype = str(t.dtype).replace("paddle.", "")
        if tuple(given.shape) != tuple(t.shape) or given.dtype.name != want_dtype:
            return (f"'{name}' is {given.dtype.name} {list(given.shape)}, the network needs "
                    f"{want_dtype} {list(t.shape)}")
    return None


def _check_state(net, state):
    own = set(net.state_dict().keys())
    given = set(state.keys())
    return sorted(own - given), sorted(given - own)


class Backbone(nn.Layer):
    """Frozen ResNet trunk returning the layer1, layer2 and layer3 feature maps.

    Args:
        arch: 'resnet18' or 'wide_resnet50_2'.
        pretrained: load Paddle's ImageNet weights (downloaded on first use).
        state: a state dict {name: array} of the ResNet (read by the caller, e.g. from a local
            file); takes precedence over ``pretrained``.
        source: description of ``state`` recorded in model files (e.g. 'file:/abs/path').
        seed: seed of the random initialisation when neither state nor pretrained are used.
    """

    def __init__(self, arch="resnet18", pretrained=True, state=None, source=None, seed=0):
        super().__init__()
        net, self.weights_source = _build_resnet(arch, pretrained, state, source, seed)
        self.arch = arch
        self.channels = get_arch(arch)[1]
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3 = net.layer1, net.layer2, net.layer3
        self.eval()
        for p in self.parameters():
            p.stop_gradient = True
        self.weights_sha256 = self._fingerprint()
        if self.weights_source.startswith("random"):
            logger.warning("backbone %s uses RANDOM weights (%s): anomaly maps are only "
                           "meaningful for tests and demos", arch, self.weights_source)
        else:
            logger.info("backbone %s weights: %s", arch, self.weights_source)

    def _fingerprint(self):
        h = hashlib.sha256()
        for name, value in sorted(self.state_dict().items()):
            h.update(name.encode())
            h.update(np.ascontiguousarray(value.numpy()).tobytes())
        return h.hexdigest()

    def forward(self, x):
        """x [B, 3, H, W] -> (layer1 [B, C1, h, w], layer2 [B, C2, h/2, w/2], layer3 [B, C3, h/4, w/4])."""
        x = self.stem(x)
        f1 = self.layer1(x)
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        return f1, f2, f3
