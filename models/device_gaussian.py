"""The streaming per-cell Gaussian of ``models.gaussian`` with its statistics on the device.

When the backbone runs on a GPU, sending every batch's embeddings back to the host (4.9 MB an
image at k = 300, 256 px) and updating the float64 sums there would leave the GPU idle. Here the
shifted sums S1, S2 and the final Cholesky inverses are Paddle ops in float64 on the tensors'
device, in chunks of cells so that the temporary float64 copies stay bounded. Same definitions
as ``PatchGaussian`` (the oracle tests run both on the CPU against a float64 two-pass fit); the
CPU path of the project stays ``PatchGaussian`` (BLAS / LAPACK on every core), which is faster
there.
"""
import numpy as np
import paddle

from utils import UserError

CHUNK_BYTES = 256 << 20        # float64 temporaries of one chunk of cells


def _tensor(y):
    return y if isinstance(y, paddle.Tensor) else paddle.to_tensor(np.asarray(y))


class DeviceGaussian:
    """Streaming per-cell Gaussian on the current Paddle device (see ``PatchGaussian``).

    Args:
        eps: covariance ridge.
        members: int [C, m] positions of each cell, or None (one Gaussian per position).

    Attributes (after ``finalize``): ``mean_`` [C, k] and ``precision_`` [C, k, k] float32
    ndarrays, ``n_samples_seen_``; ``precision_tensor_`` keeps the precision on the device.
    """

    def __init__(self, eps=0.01, members=None):
        self.eps = float(eps)
        self.members = None if members is None else np.asarray(members, dtype=np.int64)
        self.per_cell = 1 if self.members is None else self.members.shape[1]
        self._order = None if members is None else paddle.to_tensor(self.members.reshape(-1))
        self.reset()

    def reset(self):
        self.n_samples_seen_ = 0
        self._shift = self._s1 = self._s2 = None
        self.mean_ = self.precision_ = self.precision_tensor_ = None
        return self

    def _by_cell(self, y):
        """y [B, P, k] -> [C, m*B, k] (float32, on the device)."""
        y = _tensor(y).astype("float32")
        b, _, k = y.shape
        yp = y.transpose([1, 0, 2])                                             # [P, B, k]
        if self._order is None:
            return yp
        c, m = self.members.shape
        return paddle.gather(yp, self._order).reshape([c, m * b, k])

    def _chunks(self, n_cells, rows, k):
        step = max(1, CHUNK_BYTES // (8 * max(rows * k, k * k) * 3))
        return [(lo, min(lo + step, n_cells)) for lo in range(0, n_cells, step)]

    def row_sums(self, y, shape=None):
        if y is None:
            return np.zeros(shape), 0
        yc = self._by_cell(y)
        return yc.astype("float64").sum(axis=1).numpy(), yc.shape[1]

    def set_shift(self, shift):
        if self._shift is not None:
            raise ValueError("set_shift must come before the first batch")
        self._allocate(paddle.to_tensor(np.asarray(shift, dtype=np.float64)))
        return self

    def _allocate(self, shift):
        n_cells, k = shift.shape
        # a float32 shift, as PatchGaussian's: the state moves between the two exactly
        self._shift = shift.astype("float32").astype("float64")
        self._s1 = paddle.zeros([n_cells, k], dtype="float64")
        self._s2 = paddle.zeros([n_cells, k, k], dtype="float64")

    def partial_fit(self, y):
        """Accumulate embeddings y [B, P, k] (Tensor on the device, or ndarray). Returns self."""
        yc = self._by_cell(y)
        n_cells, rows, k = yc.shape
        if self._shift is None:
            self._allocate(yc.astype("float64").mean(axis=1))
        for lo, hi in self._chunks(n_cells, rows, k):
            d = yc[lo:hi].astype("float64") - self._shift[lo:hi].unsqueeze(1)
            self._s1[lo:hi] += d.sum(axis=1)
            self._s2[lo:hi] += paddle.matmul(d, d, transpose_x=True)
        self.n_samples_seen_ += rows // self.per_cell
        self.mean_ = self.precision_ = self.precision_tensor_ = None
        return self

    def _n(self):
        if self.n_samples_seen_ < 2:
            raise UserError(f"a Gaussian needs at least 2 training images, got "
                            f"{self.n_samples_seen_}: add images to train/good")
        return self.n_samples_seen_ * self.per_cell

    def _covariance(self, lo, hi, n):
        s1 = self._s1[lo:hi]
        outer = s1.unsqueeze(2) * s1.unsqueeze(1) / n
        k = s1.shape[1]
        return (self._s2[lo:hi] - outer) / (n - 1) + \
            self.eps * paddle.eye(k, dtype="float64").unsqueeze(0)

    def covariance(self):
        n = self._n()
        return np.concatenate([self._covariance(lo, hi, n).numpy() for lo, hi in
                               self._chunks(self._s1.shape[0], 1, self._s1.shape[1])])

    def _cholesky(self, cov, lo):
        try:
            return paddle.linalg.cholesky(cov)
        except Exception as exc:  # noqa: BLE001 - Paddle raises several types for a non-PD input
            raise UserError(f"a covariance of the cells from {lo} on is not positive definite "
                            f"({type(exc).__name__}): increase --eps") from None

    def finalize(self):
        """mean_ and precision_ (Cholesky factor, triangular solve, L^-T L^-1) in float64."""
        n = self._n()
        n_cells, k = self._s1.shape
        precision = paddle.empty([n_cells, k, k], dtype="float32")
        eye = paddle.eye(k, dtype="float64")
        for lo, hi in self._chunks(n_cells, 1, k):
            chol = self._cholesky(self._covariance(lo, hi, n), lo)
            inv_l = paddle.linalg.triangular_solve(chol, eye.expand([hi - lo, k, k]),
                                                   upper=False)
            precision[lo:hi] = paddle.matmul(inv_l, inv_l, transpose_x=True).astype("float32")
        mean = self._shift + self._s1 / n
        self.mean_ = mean.astype("float32").numpy()
        self.precision_tensor_ = precision
        self.precision_ = precision.numpy()
        return self

    def squared_distances(self, y):
        """Squared Mahalanobis distances [B, P] (ndarray) under the images seen so far."""
        n = self._n()
        yc = self._by_cell(y)
        n_cells, rows, k = yc.shape
        q = []
        for lo, hi in self._chunks(n_cells, rows, k):
            chol = self._cholesky(self._covariance(lo, hi, n), lo)
            mean = self._shift[lo:hi] + self._s1[lo:hi] / n
            d = (yc[lo:hi].astype("float64") - mean.unsqueeze(1)).transpose([0, 2, 1])
            z = paddle.linalg.triangular_solve(chol, d, upper=False)            # [c, k, rows]
            q.append((z * z).sum(axis=1).numpy())                               # [c, rows]
        q = np.concatenate(q)                                                   # [C, m*B]
        if self.members is None:
            return q.T
        c, m = self.members.shape
        out = np.empty((q.shape[1] // m, c * m))
        out[:, self.members] = q.reshape(c, m, -1).transpose(2, 0, 1)
        return out

    def state(self):
        return {"n_images": self.n_samples_seen_,
                "shift": self._shift.astype("float32").numpy(),
                "s1": self._s1.numpy(), "s2": self._s2.numpy()}

    def load_state(self, state):
        self.reset()
        self._allocate(paddle.to_tensor(np.asarray(state["shift"], dtype=np.float64)))
        self._s1 = paddle.to_tensor(np.asarray(state["s1"], dtype=np.float64))
        self._s2 = paddle.to_tensor(np.asarray(state["s2"], dtype=np.float64))
        self.n_samples_seen_ = int(state["n_images"])
        return self

    def reduce_with(self, reduce):
        """Sums reduced by ``reduce`` (an in-place NumPy reduction over processes)."""
        n = reduce(np.array([float(self.n_samples_seen_)]))
        s1, s2 = self._s1.numpy(), self._s2.numpy()
        reduce(s1)
        reduce(s2)
        self._s1, self._s2 = paddle.to_tensor(s1), paddle.to_tensor(s2)
        self.n_samples_seen_ = int(round(float(n[0])))
        self.mean_ = self.precision_ = self.precision_tensor_ = None
        return self
