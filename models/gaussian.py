"""Multivariate Gaussian per patch position, fitted by streaming over batches.

For every grid position p = (i, j) the N training embeddings y_p in R^k give
(OrthoAD Eq. 3 / PaDiM Eq. 1)

    mu_p    = 1/N sum_n y_np
    Sigma_p = 1/(N-1) sum_n (y_np - mu_p)(y_np - mu_p)^T + eps * I

and the anomaly score of a patch is the Mahalanobis distance (OrthoAD Eq. 4 / PaDiM Eq. 2)

    d_p(y) = sqrt(max(0, (y - mu_p)^T Sigma_p^-1 (y - mu_p))).

Only sums are kept, never the N embeddings, so memory does not grow with N: the shifted sums
S1 = sum(y - c) and S2 = sum((y - c)(y - c)^T), with c the first batch's mean, accumulated in
float64 by in-place BLAS rank-B updates (dsyrk) over a bounded buffer of images; the shift keeps
the final subtraction S2 - S1 S1^T / N well conditioned. The precision is the Cholesky-based inverse (LAPACK
potrf + potri) in float64, stored as float32. The per-position BLAS / LAPACK loops run on all
cores (``models.linalg``).
"""
import numpy as np
import paddle

from utils import UserError

from . import linalg


class PatchGaussian:
    """Streaming per-position Gaussian, scikit-learn style (NumPy, on the CPU).

    Embeddings are position-major: y [B, P, k] with P = h*w patch positions (``OrthoAD.embed``).

    Args:
        eps: ridge added to the diagonal of every covariance (0.01 in OrthoAD and PaDiM).
        buffer: images collected before one rank-``buffer`` update of the sums; a rank-B update
            streams the whole [P, k, k] accumulator once, so a larger buffer costs fewer passes
            (memory stays bounded: P*buffer*k*4 bytes).

    Attributes (after ``finalize``):
        mean_: float32 ndarray [P, k].
        precision_: float32 ndarray [P, k, k], the inverse covariances.
        n_samples_seen_: number of training images N.
    """

    def __init__(self, eps=0.01, buffer=64):
        self.eps = float(eps)
        self.buffer = int(buffer)
        self.reset()

    def reset(self):
        self.n_samples_seen_ = 0
        self._shift = self._s1 = self._s2 = self._buf = None
        self._n_pending = 0
        self.mean_ = self.precision_ = None
        return self

    def partial_fit(self, y):
        """Accumulate a batch of embeddings y [B, P, k] (Tensor or ndarray). Returns self."""
        y = y.numpy() if isinstance(y, paddle.Tensor) else np.asarray(y)
        b, n_pos, k = y.shape
        yp = y.transpose(1, 0, 2)                                  # [P, B, k] view, rows intact
        if self._shift is None:
            self._shape = (n_pos, k)
            self._shift = yp.mean(axis=1, dtype=np.float64).astype(np.float32)
            self._s1 = np.zeros((n_pos, k))
            self._s2 = linalg.zeros((n_pos, k, k))
            self._buf = linalg.zeros((n_pos, self.buffer, k), np.float32)
        elif (n_pos, k) != self._shape:
            raise ValueError(f"embedding shape {(n_pos, k)} differs from the first batch's "
                             f"{self._shape}")
        done = 0
        while done < b:
            take = min(b - done, self.buffer - self._n_pending)
            dst = self._buf[:, self._n_pending:self._n_pending + take]
            np.subtract(yp[:, done:done + take], self._shift[:, None, :], out=dst)
            self._s1 += dst.sum(axis=1, dtype=np.float64)
            self._n_pending += take
            done += take
            if self._n_pending == self.buffer:
                self._flush()
        self.n_samples_seen_ += b
        self.mean_ = self.precision_ = None
        return self

    def _flush(self):
        """S2 += sum over buffered images of (y - c)(y - c)^T (BLAS dsyrk per position)."""
        if self._n_pending:
            linalg.syrk_update(self._s2, self._buf, self._n_pending)
            self._n_pending = 0

    def _check_n(self):
        self._flush()
        n = self.n_samples_seen_
        if n < 2:
            raise UserError(f"a Gaussian needs at least 2 training images, got {n}: add images "
                            "to train/good")
        return n

    def covariance(self):
        """float64 [P, k, k] regularised covariances (full symmetric; tests, diagnostics)."""
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
        n_pos, k = self._s1.shape
        precision = linalg.zeros((n_pos, k, k), np.float32)
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
        y = y.numpy() if isinstance(y, paddle.Tensor) else np.asarray(y)
        mean = self._shift + self._s1 / n                                  # float64 [P, k]
        try:
            return linalg.quadratic_forms(self._s1, self._s2, n, self.eps, y, mean)
        except linalg.NotPositiveDefinite as exc:
            raise self._not_pd(exc) from None

    def fit(self, batches):
        """Fit on an iterable of [B, P, k] batches. Returns self."""
        self.reset()
        for y in batches:
            self.partial_fit(y)
        return self.finalize()


def mahalanobis(y, mean, precision):
    """Mahalanobis distance of every patch to its position's Gaussian (Paddle, exportable).

    Args:
        y: Tensor [B, P, k] of projected embeddings (position-major).
        mean: Tensor [P, k].
        precision: Tensor [P, k, k].

    Returns:
        Tensor [B, P] of distances sqrt(max(0, d^T P d)).
    """
    n_pos, k = mean.shape
    d = (y - mean).reshape([-1, k])                                          # [B*P, k]
    # reorder rows to [P, B, k] for one batched matmul per position; a gather of whole rows is
    # several times faster on the CPU than Paddle's strided transpose of the same tensor
    b = paddle.shape(y)[0]
    rows = (paddle.arange(n_pos, dtype="int64").unsqueeze(1)
            + paddle.arange(b, dtype="int64").unsqueeze(0) * n_pos).flatten()
    d = paddle.gather(d, rows).reshape([n_pos, -1, k])                       # [P, B, k]
    q = (paddle.matmul(d, precision) * d).sum(axis=-1)                       # [P, B]
    return q.clip(min=0.0).sqrt().transpose([1, 0])
