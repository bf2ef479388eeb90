"""Turn the patch-grid distance map into an image-size anomaly map.

Bilinear upsampling (align_corners=False, half-pixel centres, edge clamp) to the input size, then
the Gaussian blur that the references apply with ``scipy.ndimage.gaussian_filter(sigma=4)``: a
separable kernel of radius int(truncate * sigma + 0.5) = 16 (33 taps), with SciPy's 'reflect'
boundary, which mirrors including the edge pixel (d c b a | a b c d).

Both steps are linear and separable, so together they are one [S, g] matrix A per axis
(A = blur @ upsample, built in float64 from the two definitions) and the map of a g x g grid is
A D A^T: two small matrix products instead of an interpolation kernel, padding and two
convolutions (several times faster on the CPU, and plain matmuls in the exported graph).
"""
import numpy as np
import paddle
import paddle.nn as nn


def gaussian_kernel1d(sigma=4.0, truncate=4.0):
    """The normalised 1-D kernel that scipy.ndimage.gaussian_filter uses, float64 [2r+1]."""
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def blur_matrix(n, sigma=4.0, truncate=4.0):
    """[n, n] float64 B with B @ x == scipy.ndimage.gaussian_filter1d(x, sigma) (mode 'reflect')."""
    k = gaussian_kernel1d(sigma, truncate)
    r = (len(k) - 1) // 2
    rows = np.arange(n)
    out = np.zeros((n, n))
    for t in range(-r, r + 1):
        src = np.mod(rows + t, 2 * n)                    # SciPy 'reflect' has period 2n
        src = np.where(src < n, src, 2 * n - 1 - src)
        np.add.at(out, (rows, src), k[t + r])
    return out


def bilinear_matrix(n_out, n_in):
    """[n_out, n_in] float64 U with U @ x == bilinear resize of x (align_corners=False)."""
    src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    lam = src - i0
    rows = np.arange(n_out)
    out = np.zeros((n_out, n_in))
    np.add.at(out, (rows, i0), 1.0 - lam)
    np.add.at(out, (rows, i1), lam)
    return out


class AnomalyMapHead(nn.Layer):
    """[B, g, g] patch distances -> [B, 1, S, S] blurred anomaly map at the input size."""

    def __init__(self, input_size, grid, sigma=4.0):
        super().__init__()
        op = blur_matrix(int(input_size), sigma) @ bilinear_matrix(int(input_size), int(grid))
        self.register_buffer("op", paddle.to_tensor(op.astype(np.float32)))      # [S, g]

    def forward(self, dist):
        x = paddle.matmul(self.op, dist)                              # [B, S, g]
        return paddle.matmul(x, self.op, transpose_y=True).unsqueeze(1)
