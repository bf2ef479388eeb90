"""The anomaly detector as one Paddle layer: image -> (anomaly map, image score).

Shapes: B images of size S x S, F = C1 + C2 + C3 backbone channels, k projected dimensions,
h x w the layer1 patch grid (ceil(S/4) x ceil(S/4)).

Every way of running a model (evaluation, predict.py, the exported static graph used by infer.py)
calls ``OrthoAD.forward``; fitting calls ``OrthoAD.embed`` and ``models.gaussian.PatchGaussian``.
"""
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from .gaussian import mahalanobis
from .postprocess import AnomalyMapHead


class OrthoAD(nn.Layer):
    """Frozen backbone + projection W + per-position Gaussian + upsampling + blur.

    Args:
        backbone: ``models.backbone.Backbone``.
        projection: float32 ndarray W [F, k] (from ``models.projection.make_projection``).
        input_size: S, side of the (square, cropped) network input.
        mean, precision: optional Gaussian [h*w, k] and [h*w, k, k]; set later by ``set_gaussian``.
    """

    def __init__(self, backbone, projection, input_size, mean=None, precision=None):
        super().__init__()
        self.backbone = backbone
        self.input_size = int(input_size)
        self.k = int(projection.shape[1])
        c1, c2, c3 = backbone.channels
        if projection.shape[0] != c1 + c2 + c3:
            raise ValueError(f"projection has {projection.shape[0]} rows, the backbone gives "
                             f"{c1 + c2 + c3} channels")
        # y = W^T [f1 | up(f2) | up(f3)] = W1^T f1 + up(W2^T f2) + up(W3^T f3): nearest upsampling
        # commutes with a channel projection, so project each layer at its own resolution
        # (about 4x fewer multiply-adds than projecting the concatenation).
        w = projection.T.copy()                                   # [k, F]
        for name, part in zip(("w1", "w2", "w3"),
                              (w[:, :c1], w[:, c1:c1 + c2], w[:, c1 + c2:])):
            self.register_buffer(name, paddle.to_tensor(part.reshape(self.k, -1, 1, 1).copy()))
        self.head = AnomalyMapHead(self.input_size)
        self.grid = -(-self.input_size // 4)      # ceil: stride-2 conv1, then stride-2 max-pool
        if mean is not None:
            self.set_gaussian(mean, precision)

    def set_gaussian(self, mean, precision):
        """Install the fitted Gaussian: mean [h*w, k], precision [h*w, k, k] (arrays or Tensors)."""
        mean = paddle.to_tensor(mean, dtype="float32")
        precision = paddle.to_tensor(precision, dtype="float32")
        expected = [self.grid * self.grid, self.k]
        if list(mean.shape) != expected or list(precision.shape) != expected + [self.k]:
            raise ValueError(f"Gaussian of shape {list(mean.shape)} / {list(precision.shape)} "
                             f"does not fit grid {self.grid}x{self.grid} and k={self.k}")
        self.register_buffer("mean", mean)
        self.register_buffer("precision", precision)

    def embed(self, x):
        """x [B, 3, S, S] normalised images -> projected embeddings y [B, k, h, w]."""
        f1, f2, f3 = self.backbone(x)
        size = list(f1.shape[2:])
        y = F.conv2d(f1, self.w1)
        y = y + upsample_nearest(F.conv2d(f2, self.w2), size)
        return y + upsample_nearest(F.conv2d(f3, self.w3), size)

    def score(self, y):
        """Projected embeddings y [B, k, h, w] -> (anomaly_map [B, 1, S, S], image_score [B])."""
        amap = self.head(mahalanobis(y, self.mean, self.precision))
        return amap, amap.flatten(1).max(axis=1)

    def forward(self, x):
        """x [B, 3, S, S] -> (anomaly_map [B, 1, S, S], image_score [B])."""
        return self.score(self.embed(x))


def upsample_nearest(y, size):
    """Nearest-neighbour upsampling of y [B, k, h, w] to ``size`` [H, W].

    For integer factors (input side a multiple of 16) each value is repeated with expand +
    reshape, about 5x faster than Paddle's CPU nearest_interp kernel and identical to it;
    other sizes use ``F.interpolate``.
    """
    _, k, h, w = y.shape
    fh, fw = size[0] // h, size[1] // w
    if [h * fh, w * fw] != list(size):
        return F.interpolate(y, size=size, mode="nearest")
    y = y.unsqueeze(-1).expand([-1, k, h, w, fw]).reshape([-1, k, h, w * fw])
    return y.unsqueeze(3).expand([-1, k, h, fh, w * fw]).reshape([-1, k, h * fh, w * fw])
