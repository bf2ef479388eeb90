"""PatchCore as one Paddle layer: image -> (anomaly map, image score) against a memory bank.

PatchCore (Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022,
https://arxiv.org/abs/2106.08265) describes a patch at position (i, j) of layer2's grid by the
3 x 3 neighbourhood mean of layer2's and layer3's features (layer3 at its own resolution, then
brought to layer2's grid by bilinear interpolation), concatenated and averaged down to D channels
(adaptive average pooling over the channels, as the reference code does). Shapes: B images of
H x W, h x w = ceil(H/8) x ceil(W/8) layer2 positions, N = h*w patches, M bank features of D
dimensions.

Everything before the bank is linear in the backbone's features: a 3 x 3 mean with zero padding
counted (divide by 9 everywhere), bilinear interpolation and channel pooling are matrices, so each
layer is pooled over its channels first (fewer numbers to move) and then gets one [h, h_l] and
one [w, w_l] matrix product (mean and interpolation together), with no pooling or interpolation
op in the exported graph (it runs under oneDNN as well).

Scores: the patch score is the Euclidean distance to the nearest bank feature (computed as
|y|^2 - 2 y.m + |m|^2 in chunks of patches, one matrix product each); the map is those distances
upsampled and blurred as for the other methods (``AnomalyMapHead``). The image score is the
paper's Eq. 7: s* = the largest patch distance (over the patches that are scored), m_test* that
patch, m* its nearest bank feature, N_b(m*) the b nearest bank features of m* (m* itself first),
and s = (1 - exp(|m_test* - m*|) / sum_{m in N_b(m*)} exp(|m_test* - m|)) * s*, computed as
1 - 1 / sum exp(d_m - d*) so that no exponential overflows.

``scored`` (float32 [N], 1 = the patch counts, 0 = ignored) carries the ignore mask to the image
score: s* is taken over the scored patches only.
"""
import numpy as np
import paddle
import paddle.nn as nn
from paddle.static import InputSpec

from .archs import patchcore_dim, patchcore_grid
from .postprocess import AnomalyMapHead, bilinear_matrix

DEFAULT_DIM = 1024
NEIGHBOURS = 9            # b of the paper's reweighting
CHUNK = 128               # patches per nearest-neighbour matrix product
NO_PATCH = 1e30           # subtracted from the distances of ignored patches before the argmax


def pooling_matrix(n_in, n_out):
    """[n_in, n_out] float64 P with x @ P == adaptive average pooling of x from n_in to n_out
    (window i: floor(i n_in / n_out) .. ceil((i + 1) n_in / n_out))."""
    out = np.zeros((n_in, n_out))
    for i in range(n_out):
        lo, hi = (i * n_in) // n_out, -(-((i + 1) * n_in) // n_out)
        out[lo:hi, i] = 1.0 / (hi - lo)
    return out


def box_matrix(n):
    """[n, n] float64: the 3-tap mean with zero padding counted (1/3 on three diagonals)."""
    return (np.eye(n) + np.eye(n, k=1) + np.eye(n, k=-1)) / 3.0


class PatchCore(nn.Layer):
    """Frozen backbone + patch features + nearest-neighbour search in the bank + map head.

    Args:
        backbone: ``models.backbone.Backbone``.
        input_size: (H, W) of the network input (an int for a square).
        dim: target dimension D before the bank (``--patchcore_dim``).
        bank: optional [M, D] float32 memory bank; set later by ``set_bank``.
        neighbours: b of the image-score reweighting.
    """

    scoring = "patchcore"
    score_from_map = False                      # the image score is Eq. 7, not the map's peak
    stat_names = ("bank",)

    def __init__(self, backbone, input_size, dim=DEFAULT_DIM, bank=None, neighbours=NEIGHBOURS):
        super().__init__()
        self.backbone = backbone
        h, w = (input_size, input_size) if np.isscalar(input_size) else input_size
        self.input_hw = (int(h), int(w))
        _, c2, c3 = backbone.channels
        self.k = patchcore_dim(backbone.channels, dim)
        self.dim = int(dim)
        self.neighbours = int(neighbours)
        self.grid_hw = patchcore_grid(self.input_hw)
        self.n_positions = self.grid_hw[0] * self.grid_hw[1]
        grid3 = tuple(-(-s // 2) for s in self.grid_hw)
        pool = None if self.k == c2 + c3 else pooling_matrix(c2 + c3, self.k)
        self.pooled = pool is not None
        for name, part in (("pool2", pool[:c2] if self.pooled else None),
                           ("pool3", pool[c2:] if self.pooled else None)):
            if part is not None:
                self.register_buffer(name, paddle.to_tensor(part.astype(np.float32)))
        (gh, gw), (h3, w3) = self.grid_hw, grid3
        mats = {"rows2": box_matrix(gh), "cols2": box_matrix(gw),
                "rows3": bilinear_matrix(gh, h3) @ box_matrix(h3),
                "cols3": bilinear_matrix(gw, w3) @ box_matrix(w3)}
        for name, m in mats.items():
            self.register_buffer(name, paddle.to_tensor(m.astype(np.float32)))
        self.head = AnomalyMapHead(self.input_hw, self.grid_hw)
        self.register_buffer("all_scored", paddle.ones([self.n_positions], "float32"))
        if bank is not None:
            self.set_bank(bank)

    def set_bank(self, bank):
        """Install the memory bank [M, D] (an array or a Tensor; shared, not copied, when it is
        a C-contiguous float32 array on the CPU)."""
        from .orthoad import shared_tensor
        bank = shared_tensor(bank)
        if len(bank.shape) != 2 or bank.shape[1] != self.k or bank.shape[0] < self.neighbours:
            raise ValueError(f"a bank of shape {list(bank.shape)} does not fit D={self.k} and "
                             f"b={self.neighbours}")
        self.register_buffer("bank", bank)

    def embed(self, x):
        """x [B, 3, H, W] normalised images -> patch features [B, h*w, D], channels last."""
        _, f2, f3 = self.backbone(x)
        y2 = self._layer(f2, getattr(self, "pool2", None), self.rows2, self.cols2)
        y3 = self._layer(f3, getattr(self, "pool3", None), self.rows3, self.cols3)
        y = y2 + y3 if self.pooled else paddle.concat([y2, y3], axis=3)   # D < C2 + C3, or =
        return y.reshape([-1, self.n_positions, self.k])

    def _layer(self, f, pool, rows, cols):
        """One layer's share: channels pooled (or kept), then rows and columns (3 x 3 mean and
        interpolation to layer2's grid) as matrix products -> [B, h, w, D]."""
        _, c, h, w = f.shape
        f = f.reshape([-1, c, h * w])
        y = paddle.matmul(f, pool, transpose_x=True) if pool is not None else \
            f.transpose([0, 2, 1])                                        # [B, h*w, D]
        d = y.shape[-1]
        y = paddle.matmul(rows, y.reshape([-1, h, w * d]))               # [B, gh, w*D]
        gh = rows.shape[0]
        y = paddle.matmul(cols, y.reshape([-1, w, d]))                   # [B*gh, gw, D]
        return y.reshape([-1, gh, cols.shape[0], d])

    def distances(self, y, bank, centred=None):
        """Patch features y [B, N, D] -> (distance to the nearest bank feature [B, N], its index
        [B, N] int64). ``centred``: ``_centred(bank)`` if already computed.

        The nearest feature is found with |y - c|^2 - 2 (y - c).(m - c) + |m - c|^2 in chunks of
        ``CHUNK`` patches (one [B, chunk, M] product each), c the bank's mean (features are
        non-negative and far from the origin: centring keeps the expansion's cancellation
        small); its distance is then computed directly, |y - m|, so that the map does not carry
        the expansion's rounding.
        """
        centre, bank_t, bank_sq = centred or _centred(bank)
        y_c = y - centre
        index = []
        for lo in range(0, self.n_positions, CHUNK):
            hi = min(lo + CHUNK, self.n_positions)
            d2 = bank_sq - 2.0 * paddle.matmul(y_c[:, lo:hi], bank_t)
            index.append(d2.argmin(axis=2))           # + |y - c|^2 does not change the argmin
        idx = paddle.concat(index, axis=1) if len(index) > 1 else index[0]
        nearest = paddle.gather(bank, idx.reshape([-1])).reshape([-1, self.n_positions, self.k])
        return paddle.sqrt(((y - nearest) ** 2).sum(axis=2)), idx

    def image_score(self, y, bank, dist, idx, scored, centred=None):
        """The paper's reweighted image score (module docstring) [B]; N_b(m*) found with the
        centred expansion, its distances computed directly."""
        d = self.k
        centre, bank_t, bank_sq = centred or _centred(bank)
        star = paddle.argmax(dist + (scored - 1.0) * NO_PATCH, axis=1, keepdim=True)   # [B, 1]
        m_index = paddle.take_along_axis(idx, star, axis=1).reshape([-1])             # [B]
        t_star = paddle.take_along_axis(y, star.unsqueeze(2).expand([-1, 1, d]), axis=1)
        m_star = paddle.gather(bank, m_index)                                         # [B, D]
        to_bank = bank_sq - 2.0 * paddle.matmul(m_star - centre, bank_t)             # [B, M]
        _, near = paddle.topk(to_bank, self.neighbours, axis=1, largest=False)        # [B, b]
        members = paddle.gather(bank, near.reshape([-1])).reshape([-1, self.neighbours, d])
        d_nb = paddle.sqrt(((members - t_star) ** 2).sum(axis=2))                     # [B, b]
        d_star = paddle.sqrt(((m_star.unsqueeze(1) - t_star) ** 2).sum(axis=2))       # [B, 1]
        weight = 1.0 - paddle.reciprocal(paddle.exp(d_nb - d_star).sum(axis=1))
        return weight * d_star.reshape([-1])

    def score(self, y, bank=None, scored=None):
        """Patch features y [B, N, D] -> (anomaly_map [B, 1, H, W], image_score [B]) against
        the installed bank or ``bank``; ``scored`` [N]: the patches that count (default all)."""
        bank = self.bank if bank is None else bank
        scored = self.all_scored if scored is None else scored
        centred = _centred(bank)
        dist, idx = self.distances(y, bank, centred)
        amap = self.head(dist.reshape([-1, *self.grid_hw]))
        return amap, self.image_score(y, bank, dist, idx, scored, centred)

    def forward(self, x, scored=None):
        """x [B, 3, H, W] (and the scored patches [N]) -> (anomaly_map [B, 1, H, W],
        image_score [B])."""
        return self.score(self.embed(x), None, scored)

    # ------------------------------------------------------------------ graphs

    def graph_key(self):
        """What the run-time graphs depend on besides the backbone's weights and the tools."""
        return {"scoring": self.scoring, "input": list(self.input_hw), "k": self.k,
                "neighbours": self.neighbours, "chunk": CHUNK}, b""

    def graph(self, kind):
        """(layer, input specs) of the score graph (bank and scored patches as inputs), the
        head (after the backbone) or the deploy graph (bank inside)."""
        h, w = self.input_hw
        image = InputSpec([None, 3, h, w], "float32", "image")
        scored = InputSpec([self.n_positions], "float32", "scored")
        bank = InputSpec([None, self.k], "float32", "bank")
        if kind == "deploy":
            return self, [image, scored]
        if kind == "head":
            return _Head(self), [InputSpec([None, self.n_positions, self.k], "float32", "y"),
                                 bank, scored]
        return _Scorer(self), [image, bank, scored]


def _centred(bank):
    """(c, (bank - c)^T [D, M], |bank - c|^2 [M]) with c the bank's mean [D]."""
    centre = bank.mean(axis=0)
    bank_c = bank - centre
    return centre, bank_c.transpose([1, 0]), (bank_c * bank_c).sum(axis=1)


class _Scorer(nn.Layer):
    """(x [B, 3, H, W], bank [M, D], scored [N]) -> (map, score): one graph for every bank."""

    def __init__(self, detector):
        super().__init__()
        self.detector = detector

    def forward(self, x, bank, scored):
        return self.detector.score(self.detector.embed(x), bank, scored)


class _Head(nn.Layer):
    """(y [B, N, D], bank [M, D], scored [N]) -> (map, score): the graph after the backbone."""

    def __init__(self, detector):
        super().__init__()
        self.detector = detector

    def forward(self, y, bank, scored):
        return self.detector.score(y, bank, scored)


def reference_scores(y, bank, scored=None, neighbours=NEIGHBOURS):
    """The test oracle, in float64 NumPy by brute force: y [B, N, D], bank [M, D] -> (patch
    distances [B, N], image scores [B]) by the paper's formulas, written directly."""
    y, bank = np.asarray(y, np.float64), np.asarray(bank, np.float64)
    scored = np.ones(y.shape[1], bool) if scored is None else np.asarray(scored) > 0.5
    dist = np.empty(y.shape[:2])
    nearest = np.empty(y.shape[:2], np.int64)
    for b in range(len(y)):
        d = np.sqrt(((y[b][:, None, :] - bank[None]) ** 2).sum(axis=2))           # [N, M]
        nearest[b], dist[b] = d.argmin(axis=1), d.min(axis=1)
    scores = np.empty(len(y))
    for b in range(len(y)):
        p = int(np.argmax(np.where(scored, dist[b], -np.inf)))
        m_star = bank[nearest[b, p]]
        order = np.argsort(np.sqrt(((bank - m_star) ** 2).sum(axis=1)), kind="stable")
        members = bank[order[:neighbours]]
        d_nb = np.sqrt(((members - y[b, p]) ** 2).sum(axis=1))
        d_star = np.sqrt(((m_star - y[b, p]) ** 2).sum())
        scores[b] = (1.0 - np.exp(d_star) / np.exp(d_nb).sum()) * d_star
    return dist, scores
