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
potrf + potri) in float64, stored as float32.
"""
import numpy as np
import paddle
from scipy.linalg import blas, lapack

from utils import UserError


class PatchGaussian:
    """Streaming per-position Gaussian, scikit-learn style (NumPy, on the CPU).

    Args:
        eps: ridge added to the diagonal of every covariance (0.01 in OrthoAD and PaDiM).
        buffer: images collected before one rank-``buffer`` update of the sums; a rank-B update
            streams the whole [h*w, k, k] accumulator once, so a larger buffer costs fewer passes
            (memory stays bounded: h*w*buffer*k*4 bytes).

    Attributes (after ``finalize``):
        mean_: float32 ndarray [h*w, k].
        precision_: float32 ndarray [h*w, k, k], the inverse covariances.
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
        """Accumulate a batch of embeddings y [B, k, h, w] (Tensor or ndarray). Returns self."""
        y = y.numpy() if isinstance(y, paddle.Tensor) else np.asarray(y)
        b, k, h, w = y.shape
        yp = y.reshape(b, k, h * w).transpose(2, 0, 1)                        # [hw, B, k] view
        if self._shift is None:
            self._shape = (k, h, w)
            self._shift = yp.mean(axis=1, dtype=np.float64).astype(np.float32)
            self._s1 = np.zeros((h * w, k))
            self._s2 = np.zeros((h * w, k, k))
            self._buf = np.empty((h * w, self.buffer, k), dtype=np.float32)
            self._scratch = np.empty((self.buffer, k))
        elif (k, h, w) != self._shape:
            raise ValueError(f"embedding shape {(k, h, w)} differs from the first batch's "
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
        """S2 += sum over buffered images of (y - c)(y - c)^T, one BLAS dsyrk per position."""
        m = self._n_pending
        if m == 0:
            return
        a = self._scratch[:m]
        for p in range(self._buf.shape[0]):
            # Fortran views avoid copies: a.T is [k, m] and C += a.T a.T^T; s2[p].T's 'lower'
            # triangle is s2[p]'s upper triangle.
            np.copyto(a, self._buf[p, :m])
            blas.dsyrk(1.0, a.T, beta=1.0, c=self._s2[p].T, trans=0, lower=1, overwrite_c=1)
        self._n_pending = 0

    def covariance(self):
        """float64 [h*w, k, k] regularised covariances (full symmetric; tests, diagnostics)."""
        self._flush()
        n = self.n_samples_seen_
        upper = np.triu(self._s2)
        s2 = upper + np.triu(upper, 1).transpose(0, 2, 1)
        outer = self._s1[:, :, None] * self._s1[:, None, :] / n
        return (s2 - outer) / (n - 1) + self.eps * np.eye(self._s1.shape[1])

    def finalize(self):
        """Compute ``mean_`` and ``precision_`` from the sums. Returns self."""
        self._flush()
        n = self.n_samples_seen_
        if n < 2:
            raise UserError(f"a Gaussian needs at least 2 training images, got {n}: add images "
                            "to train/good")
        hw, k = self._s1.shape
        precision = np.empty((hw, k, k), dtype=np.float32)
        ridge = self.eps * np.eye(k)
        for p in range(hw):
            # Only the upper triangle (C order) of s2[p] is filled, and only it is read:
            # seen as a Fortran matrix (.T) it is the 'lower' triangle LAPACK works on.
            s1 = self._s1[p]
            cov = (self._s2[p] - np.outer(s1, s1 / n)) / (n - 1) + ridge
            chol, info = lapack.dpotrf(cov.T, lower=1, clean=0, overwrite_a=1)
            if info == 0:
                inv, info = lapack.dpotri(chol, lower=1, overwrite_c=1)
            if info != 0:
                raise UserError(f"covariance at patch {p} is not positive definite (LAPACK info "
                                f"{info}): increase --eps")
            upper = np.triu(inv.T)
            precision[p] = upper + np.triu(upper, 1).T
        self.mean_ = (self._shift + self._s1 / n).astype(np.float32)
        self.precision_ = precision
        return self

    def fit(self, batches):
        """Fit on an iterable of [B, k, h, w] batches. Returns self."""
        self.reset()
        for y in batches:
            self.partial_fit(y)
        return self.finalize()


def mahalanobis(y, mean, precision):
    """Mahalanobis distance of every patch to its position's Gaussian (Paddle, exportable).

    Args:
        y: Tensor [B, k, h, w] of projected embeddings.
        mean: Tensor [h*w, k].
        precision: Tensor [h*w, k, k].

    Returns:
        Tensor [B, h, w] of distances sqrt(max(0, d^T P d)).
    """
    b, k, h, w = y.shape
    d = y.reshape([b, k, h * w]).transpose([2, 0, 1]) - mean.unsqueeze(1)   # [hw, B, k]
    q = (paddle.matmul(d, precision) * d).sum(axis=-1)                       # [hw, B]
    return q.clip(min=0.0).sqrt().transpose([1, 0]).reshape([b, h, w])
