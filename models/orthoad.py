"""The anomaly detector as one Paddle layer: image -> (anomaly map, image score).

Shapes: B images of size H x W, F = C1 + C2 + C3 backbone channels, k projected dimensions,
h x w the layer1 patch grid (ceil(H/4) x ceil(W/4)), C the Gaussians (h*w, or h*w / c^2 with
cells of c x c positions).

Every way of running a model (evaluation, predict.py, the exported static graph used by infer.py)
calls ``OrthoAD.forward``; fitting calls ``OrthoAD.embed`` and ``models.gaussian.PatchGaussian``.
"""
import numpy as np
import paddle
import paddle.nn as nn
from paddle.static import InputSpec

from .gaussian import cell_members, cell_shape, mahalanobis
from .postprocess import AnomalyMapHead


class OrthoAD(nn.Layer):
    """Frozen backbone + projection W + per-cell Gaussian + upsampling + blur.

    Args:
        backbone: ``models.backbone.Backbone``.
        projection: float32 ndarray W [F, k] (from ``models.projection.make_projection``).
        input_size: (H, W) of the network input (an int for a square).
        mean, precision: optional Gaussian [C, k] and [C, k, k]; set later by ``set_gaussian``.
        cell: side of the square blocks of grid positions that share one Gaussian (1: one per
            position, C = h*w), or (ch, cw) for rectangular blocks.
    """

    scoring = "gaussian"
    score_from_map = True                       # the image score is the map's peak
    stat_names = ("mean", "precision")

    def __init__(self, backbone, projection, input_size, mean=None, precision=None, cell=1):
        super().__init__()
        self.backbone = backbone
        h, w = (input_size, input_size) if np.isscalar(input_size) else input_size
        self.input_hw = (int(h), int(w))
        self.k = int(projection.shape[1])
        c1, c2, c3 = backbone.channels
        if projection.shape[0] != c1 + c2 + c3:
            raise ValueError(f"projection has {projection.shape[0]} rows, the backbone gives "
                             f"{c1 + c2 + c3} channels")
        # y = W^T [f1 | up(f2) | up(f3)] = W1^T f1 + up(W2^T f2) + up(W3^T f3): nearest upsampling
        # commutes with a channel projection, so project each layer at its own resolution
        # (about 4x fewer multiply-adds than projecting the concatenation).
        for name, part in zip(("w1", "w2", "w3"), (projection[:c1], projection[c1:c1 + c2],
                                                   projection[c1 + c2:])):
            self.register_buffer(name, paddle.to_tensor(part.astype("float32")))
        # ceil: stride-2 conv1, then stride-2 max-pool
        self.grid_hw = (-(-self.input_hw[0] // 4), -(-self.input_hw[1] // 4))
        self.n_positions = self.grid_hw[0] * self.grid_hw[1]
        ch, cw = cell_shape(cell)
        self.cell = ch if ch == cw else (ch, cw)                  # as stored in model files
        self.cell_size = ch * cw                                  # positions per Gaussian
        self.members = cell_members(self.grid_hw, (ch, cw))                  # [C, ch*cw]
        self.n_cells = len(self.members)
        if self.cell_size > 1:
            order = self.members.reshape(-1)
            self.register_buffer("cell_order", paddle.to_tensor(order))
            self.register_buffer("cell_inverse", paddle.to_tensor(np.argsort(order)))
        else:
            self.cell_order = self.cell_inverse = None
        self.head = AnomalyMapHead(self.input_hw, self.grid_hw)
        if mean is not None:
            self.set_gaussian(mean, precision)

    def set_gaussian(self, mean, precision):
        """Install the fitted Gaussian: mean [C, k], precision [C, k, k] (arrays or Tensors).

        C-contiguous float32 arrays are shared with the layer, not copied (1.47 GB of precision
        at wide_resnet50_2, k=300).
        """
        mean, precision = shared_tensor(mean), shared_tensor(precision)
        expected = [self.n_cells, self.k]
        if list(mean.shape) != expected or list(precision.shape) != expected + [self.k]:
            raise ValueError(f"Gaussian of shape {list(mean.shape)} / {list(precision.shape)} "
                             f"does not fit {self.n_cells} cells and k={self.k}")
        self.register_buffer("mean", mean)
        self.register_buffer("precision", precision)

    def embed(self, x):
        """x [B, 3, H, W] normalised images -> projected embeddings y [B, h*w, k].

        Position-major (channels last): the Gaussian statistics and the Mahalanobis distance work
        on whole k-vectors per position, and the projection's matrix product writes this layout
        directly (no transpose of the k x h x w embedding).
        """
        ys = [_project(f, w) for f, w in zip(self.backbone(x), (self.w1, self.w2, self.w3))]
        y1, y2, y3 = ys                                                   # [B, h_i, w_i, k]
        size = list(y1.shape[1:3])
        if all(s % t == 0 for s, t in zip(size, y2.shape[1:3])) and \
                all(s % t == 0 for s, t in zip(y2.shape[1:3], y3.shape[1:3])):
            # integer factors: add layer3 at layer2's resolution first (one upsampling fewer)
            y = y1 + upsample_nearest(y2 + upsample_nearest(y3, list(y2.shape[1:3])), size)
        else:
            y = y1 + upsample_nearest(y2, size) + upsample_nearest(y3, size)
        return y.reshape([-1, size[0] * size[1], self.k])

    def score(self, y, mean=None, precision=None):
        """Projected embeddings y [B, h*w, k] -> (anomaly_map [B, 1, H, W], image_score [B]),
        under the installed Gaussian or the given one (mean [C, k], precision [C, k, k])."""
        mean = self.mean if mean is None else mean
        precision = self.precision if precision is None else precision
        dist = mahalanobis(y, mean, precision, self.cell_order, self.cell_inverse)
        return self.head_scores(dist.reshape([-1, *self.grid_hw]))

    def head_scores(self, dist):
        """Patch distances [B, h, w] -> (anomaly_map [B, 1, H, W], image_score [B])."""
        amap = self.head(dist)
        return amap, amap.flatten(1).max(axis=1)

    def forward(self, x):
        """x [B, 3, H, W] -> (anomaly_map [B, 1, H, W], image_score [B])."""
        return self.score(self.embed(x))

    # ------------------------------------------------------------------ graphs

    def graph_key(self):
        """What the run-time graphs depend on besides the backbone's weights and the tools:
        (JSON-able facts, bytes of W)."""
        w = np.concatenate([self.w1.numpy(), self.w2.numpy(), self.w3.numpy()])
        return ({"input": list(self.input_hw), "cell": self.cell, "k": self.k},
                np.ascontiguousarray(w).tobytes())

    def graph(self, kind):
        """(layer, input specs) of the score graph (Gaussian as inputs), the head (after the
        backbone: embeddings and Gaussian as inputs) or the deploy graph (Gaussian inside)."""
        h, w = self.input_hw
        image = InputSpec([None, 3, h, w], "float32", "image")
        if kind == "deploy":
            return self, [image]
        c, k = self.n_cells, self.k
        gaussian = [InputSpec([c, k], "float32", "mean"),
                    InputSpec([c, k, k], "float32", "precision")]
        if kind == "head":
            return EmbeddingScorer(self), [InputSpec([None, self.n_positions, k], "float32",
                                                     "y")] + gaussian
        return GaussianScorer(self), [image] + gaussian


def shared_tensor(a):
    """A float32 Tensor on the current device: on the CPU, a view of ``a``'s memory when ``a``
    is a writable C-contiguous float32 ndarray (DLPack); a float32 Tensor as it is; else a
    copy."""
    if isinstance(a, paddle.Tensor) and a.dtype == paddle.float32:
        return a
    if isinstance(a, np.ndarray) and a.dtype == np.float32 and a.flags.c_contiguous and \
            a.flags.writeable and a.size and paddle.device.get_device() == "cpu":
        return paddle.utils.dlpack.from_dlpack(a)
    return paddle.to_tensor(a, dtype="float32")


def _project(f, w):
    """Backbone features f [B, C, h, w] and W_i [C, k] -> W_i^T f, channels last [B, h, w, k]."""
    _, c, h, wd = f.shape
    return paddle.matmul(f.reshape([-1, c, h * wd]), w, transpose_x=True).reshape(
        [-1, h, wd, w.shape[1]])


def upsample_nearest(y, size):
    """Nearest-neighbour upsampling of channels-last y [B, h, w, k] to ``size`` [H, W].

    Same result as ``F.interpolate(mode="nearest")`` (source index floor(i * h / H)). Integer
    factors repeat each k-vector with expand + reshape (whole rows copied, much faster than
    Paddle's CPU nearest_interp kernel); other sizes gather rows and columns by index. Neither
    uses an interpolate op, so the exported graph also runs under oneDNN.
    """
    _, h, w, k = y.shape
    fh, fw = size[0] // h, size[1] // w
    if [h * fh, w * fw] != list(size):
        rows = paddle.to_tensor(_nearest_index(h, size[0]))
        cols = paddle.to_tensor(_nearest_index(w, size[1]))
        return paddle.index_select(paddle.index_select(y, rows, axis=1), cols, axis=2)
    if fh == fw == 1:
        return y
    y = y.unsqueeze(3).expand([-1, h, w, fw, k]).reshape([-1, h, w * fw, k])
    return y.unsqueeze(2).expand([-1, h, fh, w * fw, k]).reshape([-1, h * fh, w * fw, k])


def _nearest_index(n_in, n_out):
    """Source index of each output row, computed as Paddle's (and PyTorch's) nearest kernel does:
    float32 ratio n_in / n_out times the output index, truncated."""
    ratio = np.float32(n_in) / np.float32(n_out)
    return (ratio * np.arange(n_out, dtype=np.float32)).astype(np.int64)


class Embedder(nn.Layer):
    """The fit's graph: x [B, 3, H, W] -> embeddings y [B, h*w, k] (backbone + projection)."""

    def __init__(self, detector):
        super().__init__()
        self.detector = detector

    def forward(self, x):
        return self.detector.embed(x)


class GaussianScorer(nn.Layer):
    """The scoring graph with the Gaussian as inputs, so that one graph serves every category
    of a run: (x [B, 3, H, W], mean [C, k], precision [C, k, k]) -> (map [B, 1, H, W],
    score [B])."""

    def __init__(self, detector):
        super().__init__()
        self.detector = detector

    def forward(self, x, mean, precision):
        return self.detector.score(self.detector.embed(x), mean, precision)


class EmbeddingScorer(nn.Layer):
    """The scoring graph after the backbone, with the Gaussian as inputs: (y [B, h*w, k],
    mean [C, k], precision [C, k, k]) -> (map [B, 1, H, W], score [B]). It follows an int8
    embedding graph, so that only the backbone is quantised."""

    def __init__(self, detector):
        super().__init__()
        self.detector = detector

    def forward(self, y, mean, precision):
        return self.detector.score(y, mean, precision)
