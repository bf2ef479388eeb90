"""Turn the patch-grid distance map into an image-size anomaly map.

Bilinear upsampling (align_corners=False) to the input size, then the Gaussian blur that the
references apply with ``scipy.ndimage.gaussian_filter(sigma=4)``: a separable kernel of radius
int(truncate * sigma + 0.5) = 16 (33 taps), with SciPy's 'reflect' boundary, which mirrors
including the edge pixel (d c b a | a b c d). It is written as fixed depthwise convolutions so the
exported static graph contains it.
"""
import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F


def gaussian_kernel1d(sigma=4.0, truncate=4.0):
    """The normalised 1-D kernel that scipy.ndimage.gaussian_filter uses, float64 [2r+1]."""
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _pad_symmetric(x, r, axis):
    """Mirror r samples at both ends of ``axis`` including the edge sample (numpy 'symmetric')."""
    n = x.shape[axis]
    head = paddle.flip(paddle.slice(x, axes=[axis], starts=[0], ends=[r]), axis=[axis])
    tail = paddle.flip(paddle.slice(x, axes=[axis], starts=[n - r], ends=[n]), axis=[axis])
    return paddle.concat([head, x, tail], axis=axis)


class GaussianBlur(nn.Layer):
    """Separable Gaussian blur of single-channel maps [B, 1, H, W] equal to SciPy's.

    Needs H, W >= radius (16 for sigma 4); larger sizes behave exactly like SciPy.
    """

    def __init__(self, sigma=4.0, truncate=4.0):
        super().__init__()
        k = gaussian_kernel1d(sigma, truncate).astype(np.float32)
        self.radius = (len(k) - 1) // 2
        self.register_buffer("kernel_w", paddle.to_tensor(k.reshape(1, 1, 1, -1)))
        self.register_buffer("kernel_h", paddle.to_tensor(k.reshape(1, 1, -1, 1)))

    def forward(self, x):
        r = self.radius
        x = F.conv2d(_pad_symmetric(x, r, 3), self.kernel_w)
        return F.conv2d(_pad_symmetric(x, r, 2), self.kernel_h)


class AnomalyMapHead(nn.Layer):
    """[B, h, w] patch distances -> [B, 1, H, W] blurred anomaly map at the input size."""

    def __init__(self, input_size, sigma=4.0):
        super().__init__()
        self.input_size = [int(input_size), int(input_size)]
        self.blur = GaussianBlur(sigma)

    def forward(self, dist):
        x = F.interpolate(dist.unsqueeze(1), size=self.input_size, mode="bilinear",
                          align_corners=False)
        return self.blur(x)
