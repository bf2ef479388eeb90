"""Turn the patch-grid distance map into an image-size anomaly map.

Bilinear upsampling (align_corners=False, half-pixel centres, edge clamp) to the input size, then
the Gaussian blur that the references apply with ``scipy.ndimage.gaussian_filter(sigma=4)``: a
separable kernel of radius int(truncate * sigma + 0.5) = 16 (33 taps), with SciPy's 'reflect'
boundary, which mirrors including the edge pixel (d c b a | a b c d).

Both steps are linear and separable, so together they are one matrix per axis (A = blur @
upsample, [H, h] for the rows and [W, w] for the columns, built in float64 from the two
definitions) and the map of an h x w grid D is A_rows D A_cols^T: two small matrix products instead of an interpolation kernel, padding and two
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
    """[B, h, w] patch distances -> [B, 1, H, W] blurred anomaly map at the input size.

    Args:
        input_hw: (H, W) of the network input (an int for a square).
        grid_hw: (h, w) of the patch grid (an int for a square).
    """

    def __init__(self, input_hw, grid_hw, sigma=4.0):
        super().__init__()
        (height, width), (gh, gw) = _pair(input_hw), _pair(grid_hw)
        rows = blur_matrix(height, sigma) @ bilinear_matrix(height, gh)           # [H, h]
        cols = blur_matrix(width, sigma) @ bilinear_matrix(width, gw)             # [W, w]
        self.register_buffer("rows", paddle.to_tensor(rows.astype(np.float32)))
        self.register_buffer("cols", paddle.to_tensor(cols.astype(np.float32)))

    def forward(self, dist):
        x = paddle.matmul(self.rows, dist)                            # [B, H, w]
        return paddle.matmul(x, self.cols, transpose_y=True).unsqueeze(1)


def _pair(v):
    return (int(v), int(v)) if np.isscalar(v) else (int(v[0]), int(v[1]))
