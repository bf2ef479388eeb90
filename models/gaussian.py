"""Multivariate Gaussian per patch position (or per cell of positions), fitted by streaming.

For every grid position p = (i, j) the N training embeddings y_p in R^k give
(OrthoAD Eq. 3 / PaDiM Eq. 1)

    mu_p    = 1/N sum_n y_np
    Sigma_p = 1/(N-1) sum_n (y_np - mu_p)(y_np - mu_p)^T + eps * I

and the anomaly score of a patch is the Mahalanobis distance (OrthoAD Eq. 4 / PaDiM Eq. 2)

    d_p(y) = sqrt(max(0, (y - mu_p)^T Sigma_p^-1 (y - mu_p))).

Cells: at high resolution one Gaussian per position does not fit in memory (positions x k^2: a
2048 x 2048 input has 512 x 512 positions, 10 GB of float32 precision at k = 100). With
``cell`` c > 1 the positions of each c x c block of the grid share one Gaussian, fitted on the
N * c^2 embeddings of its positions (c = 1 is the papers' model).

Only sums are kept, never the N embeddings, so memory does not grow with N: the shifted sums
S1 = sum(y - c) and S2 = sum((y - c)(y - c)^T), with c a shift (by default the first batch's
mean), accumulated in float64 by in-place BLAS rank-B updates (dsyrk) over a bounded buffer of
embeddings; the shift keeps the final subtraction S2 - S1 S1^T / N well conditioned. Sums of
several Gaussians merge exactly (``merge``), whatever their shifts. The precision is the
Cholesky-based inverse (LAPACK potrf + potri) in float64, stored as float32. The per-cell BLAS /
LAPACK loops run on all cores (``models.linalg``).
"""
import numpy as np
import paddle

from utils import UserError

from . import linalg


def cell_shape(cell):
    """(ch, cw) of a cell given as a side c (square) or as a pair."""
    if np.isscalar(cell):
        return int(cell), int(cell)
    ch, cw = cell
    return int(ch), int(cw)


def cell_members(grid_hw, cell):
    """Positions of each cell: int64 [C, ch*cw], cells and their members in row-major order.

    Args:
        grid_hw: (h, w) of the patch grid; h must be a multiple of ch, w of cw.
        cell: side c of the square blocks of positions that share a Gaussian, or (ch, cw).
    """
    h, w = grid_hw
    ch, cw = cell_shape(cell)
    if h % ch or w % cw:
        raise UserError(f"the {h}x{w} patch grid does not divide into {ch}x{cw} cells: "
                        "choose --cell dividing the grid sides (input side / 4)")
    pos = np.arange(h * w, dtype=np.int64).reshape(h // ch, ch, w // cw, cw)
    return np.ascontiguousarray(pos.transpose(0, 2, 1, 3).reshape(-1, ch * cw))


class PatchGaussian:
    """Streaming per-cell Gaussian, scikit-learn style (NumPy, on the CPU).

    Embeddings are position-major: y [B, P, k] with P = h*w patch positions (``OrthoAD.embed``).

    Args:
        eps: ridge added to the diagonal of every covariance (0.01 in OrthoAD and PaDiM).
        buffer: embedding rows per cell collected before one rank-``buffer`` update of the sums;
            a rank-B update streams the whole [C, k, k] accumulator once, so a larger buffer
            costs fewer passes (memory stays bounded: C*buffer*k*4 bytes).
        members: int [C, m] positions of each cell (``cell_members``), or None for one Gaussian
            per position.

    Attributes (after ``finalize``):
        mean_: float32 ndarray [C, k].
        precision_: float32 ndarray [C, k, k], the inverse covariances.
        n_samples_seen_: number of training images N.
    """

    def __init__(self, eps=0.01, buffer=64, members=None):
        self.eps = float(eps)
        self.members = None if members is None else np.asarray(members, dtype=np.int64)
        self.per_cell = 1 if self.members is None else self.members.shape[1]
        self.buffer = max(int(buffer), self.per_cell)
        self.reset()

    def reset(self):
        self.n_samples_seen_ = 0
        self._shift = self._s1 = self._s2 = self._buf = None
        self._n_pending = 0
        self.mean_ = self.precision_ = None
        return self

    def _by_cell(self, y):
        """y [B, P, k] -> [C, m*B, k]: the rows of each cell (member-major)."""
        y = y.numpy() if isinstance(y, paddle.Tensor) else np.asarray(y)
        yp = y.transpose(1, 0, 2)                                  # [P, B, k] view, rows intact
        if self.members is None:
            return yp
        c, m = self.members.shape
        return yp[self.members].reshape(c, m * y.shape[0], y.shape[2])

    def set_shift(self, shift):
        """Use ``shift`` [C, k] for the sums (before the first batch), e.g. one common to all
        processes of a data-parallel fit, so that their sums add without re-centring."""
        if self._shift is not None:
            raise ValueError("set_shift must come before the first batch")
        self._allocate(np.asarray(shift, dtype=np.float32))
        return self

    def row_sums(self, y, shape=None):
        """(float64 [C, k] sums of the rows of each cell in y [B, P, k], number of rows per
        cell); zeros for y None (then ``shape`` = (C, k) is needed, or the members' count)."""
        if y is None:
            if shape is None:
                raise ValueError("row_sums(None) needs the shape (C, k)")
            return np.zeros(shape), 0
        yc = self._by_cell(y)
        return yc.sum(axis=1, dtype=np.float64), yc.shape[1]

    def reduce_with(self, reduce):
        """Replace the sums by ``reduce(array)`` of each (in place), e.g. their sum over the
        processes of a data-parallel fit that share one shift (``set_shift``). Returns self."""
        self._flush()
        n = reduce(np.array([float(self.n_samples_seen_)]))
        reduce(self._s1)
        reduce(self._s2)
        self.n_samples_seen_ = int(round(float(n[0])))
        self.mean_ = self.precision_ = None
        return self

    def _allocate(self, shift):
        n_cells, k = shift.shape
        self._shift = np.ascontiguousarray(shift, dtype=np.float32)
        self._s1 = np.zeros((n_cells, k))
        self._s2 = linalg.zeros((n_cells, k, k))
        self._buf = linalg.zeros((n_cells, self.buffer, k), np.float32)

    def partial_fit(self, y):
        """Accumulate a batch of embeddings y [B, P, k] (Tensor or ndarray). Returns self."""
        yc = self._by_cell(y)
        n_cells, rows, k = yc.shape
        if self._shift is None:
            self._allocate(yc.mean(axis=1, dtype=np.float64).astype(np.float32))
        elif (n_cells, k) != self._shift.shape:
            raise ValueError(f"embedding shape {(n_cells, k)} differs from the first batch's "
                             f"{self._shift.shape}")
        done = 0
        while done < rows:
            take = min(rows - done, self.buffer - self._n_pending)
            dst = self._buf[:, self._n_pending:self._n_pending + take]
            np.subtract(yc[:, done:done + take], self._shift[:, None, :], out=dst)
            self._s1 += dst.sum(axis=1, dtype=np.float64)
            self._n_pending += take
            done += take
            if self._n_pending == self.buffer:
                self._flush()
        self.n_samples_seen_ += rows // self.per_cell
        self.mean_ = self.precision_ = None
        return self

    def _flush(self):
        """S2 += sum over buffered rows of (y - c)(y - c)^T (BLAS dsyrk per cell)."""
        if self._n_pending:
            linalg.syrk_update(self._s2, self._buf, self._n_pending)
            self._n_pending = 0

    def _check_n(self):
        self._flush()
        n = self.n_samples_seen_
        if n < 2:
            raise UserError(f"a Gaussian needs at least 2 training images, got {n}: add images "
                            "to train/good")
        return n * self.per_cell

    # ----------------------------------------------------------------- state and merging

    def state(self):
        """The sufficient statistics: {n_images, shift [C, k] float32, s1 [C, k] float64,
        s2 [C, k, k] float64 (upper triangle)}. Arrays are the object's own, not copies."""
        self._flush()
        return {"n_images": self.n_samples_seen_, "shift": self._shift, "s1": self._s1,
                "s2": self._s2}

    def load_state(self, state):
        """Continue from ``state()`` of a Gaussian with the same cells. Returns self."""
        self.reset()
        self._allocate(np.asarray(state["shift"], dtype=np.float32))
        self._s1[...] = state["s1"]
        self._s2[...] = state["s2"]
        self.n_samples_seen_ = int(state["n_images"])
        return self

    def merge(self, other):
        """Add the images of ``other`` (a PatchGaussian of the same cells, or its ``state()``)
        exactly: its sums are moved to this object's shift first. Returns self."""
        st = other.state() if isinstance(other, PatchGaussian) else other
        if st["n_images"] == 0:
            return self
        if self._shift is None:
            return self.load_state(st)
        if st["shift"].shape != self._shift.shape:
            raise ValueError(f"cannot merge Gaussians of shapes {st['shift'].shape} and "
                             f"{self._shift.shape}")
        self._flush()
        n = st["n_images"] * self.per_cell
        delta = st["shift"].astype(np.float64) - self._shift          # old shift - new shift
        s1 = st["s1"] + n * delta
        # sum (z + d)(z + d)^T = S2 + S1 d^T + d S1^T + n d d^T  (only the upper part is read)
        outer = np.einsum("ck,cl->ckl", st["s1"], delta)
        self._s2 += st["s2"]
        self._s2 += outer
        self._s2 += outer.transpose(0, 2, 1)
        self._s2 += n * np.einsum("ck,cl->ckl", delta, delta)
        self._s1 += s1
        self.n_samples_seen_ += st["n_images"]
        self.mean_ = self.precision_ = None
        return self

    # ----------------------------------------------------------------- results

    def covariance(self):
        """float64 [C, k, k] regularised covariances (full symmetric; tests, diagnostics)."""
        n = self._check_n()
        s2 = linalg.symmetric_from_upper(self._s2)
        outer = self._s1[:, :, None] * self._s1[:, None, :] / n
        return (s2 - outer) / (n - 1) + self.eps * np.eye(self._s1.shape[1])

    def _not_pd(self, exc):
        return UserError(f"covariance at patch {exc.position} is not positive definite (LAPACK "
                         f"info {exc.info}): increase --eps")

    def finalize(self):
        """Compute ``mean_`` and ``precision_`` from the sums. Returns self."""
        n = self._check_n()
        n_cells, k = self._s1.shape
        precision = linalg.zeros((n_cells, k, k), np.float32)
        try:
            linalg.precision_from_sums(self._s1, self._s2, n, self.eps, precision)
        except linalg.NotPositiveDefinite as exc:
            raise self._not_pd(exc) from None
        self.mean_ = (self._shift + self._s1 / n).astype(np.float32)
        self.precision_ = precision
        return self

    def squared_distances(self, y):
        """Squared Mahalanobis distances [B, P] of embeddings y [B, P, k] under the Gaussian of the
        images seen so far, without forming the precision matrices (Cholesky solves, float64).

        Used to score held-out images cheaply: about a third of ``finalize``'s arithmetic.
        """
        n = self._check_n()
        yc = self._by_cell(y)                                          # [C, m*B, k]
        mean = self._shift + self._s1 / n                              # float64 [C, k]
        try:
            q = linalg.quadratic_forms(self._s1, self._s2, n, self.eps,
                                       yc.transpose(1, 0, 2), mean)    # [m*B, C]
        except linalg.NotPositiveDefinite as exc:
            raise self._not_pd(exc) from None
        if self.members is None:
            return q
        c, m = self.members.shape
        out = np.empty((q.shape[0] // m, c * m))
        out[:, self.members] = q.reshape(m, -1, c).transpose(1, 2, 0)
        return out

    def fit(self, batches):
        """Fit on an iterable of [B, P, k] batches. Returns self."""
        self.reset()
        for y in batches:
            self.partial_fit(y)
        return self.finalize()


def mahalanobis(y, mean, precision, members=None, inverse=None):
    """Mahalanobis distance of every patch to its Gaussian (Paddle, exportable).

    Args:
        y: Tensor [B, P, k] of projected embeddings (position-major).
        mean: Tensor [C, k]; precision: Tensor [C, k, k] (C = P without cells).
        members: None, or int64 Tensor [P] of the positions in cell order (``cell_members``
            flattened); inverse: its inverse permutation.

    Returns:
        Tensor [B, P] of distances sqrt(max(0, d^T P d)).
    """
    n_pos, k = y.shape[1], y.shape[2]
    n_cells = mean.shape[0]
    # rows in (cell, member, image) order for one batched matmul per cell; a gather of whole
    # rows is several times faster on the CPU than Paddle's strided transpose of the same tensor
    b = paddle.shape(y)[0]
    order = paddle.arange(n_pos, dtype="int64") if members is None else members
    rows = (order.unsqueeze(1) + paddle.arange(b, dtype="int64").unsqueeze(0) * n_pos).flatten()
    d = paddle.gather(y.reshape([-1, k]), rows).reshape([n_cells, -1, k]) - mean.unsqueeze(1)
    q = (paddle.matmul(d, precision) * d).sum(axis=-1).reshape([n_pos, -1])   # [P, B], cell order
    if inverse is not None:
        q = paddle.gather(q, inverse)                                         # position order
    return q.clip(min=0.0).sqrt().transpose([1, 0])


def pack_state(state):
    """A Gaussian's ``state()`` as arrays for a model file: the shift (float32), S1 and the
    upper triangle of S2 row by row (float64, k(k+1)/2 values a cell: half of the full sums)."""
    s2 = state["s2"]
    rows, cols = np.triu_indices(s2.shape[1])
    return {"sums_shift": np.asarray(state["shift"], dtype=np.float32),
            "sums_s1": np.asarray(state["s1"], dtype=np.float64),
            "sums_s2_upper": np.ascontiguousarray(s2[:, rows, cols], dtype=np.float64)}


def unpack_state(arrays, n_images):
    """``pack_state``'s arrays (and the image count) -> a state for ``load_state``."""
    packed = arrays["sums_s2_upper"]
    n_cells, k = arrays["sums_s1"].shape
    rows, cols = np.triu_indices(k)
    s2 = linalg.zeros((n_cells, k, k))
    s2[:, rows, cols] = packed
    return {"n_images": int(n_images), "shift": arrays["sums_shift"], "s1": arrays["sums_s1"],
            "s2": s2}
