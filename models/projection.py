"""Dimension reduction of the patch embedding, y = W^T x with W [F, k].

* ``ortho`` (OrthoAD, Sec. 2.2 of the paper): W is semi-orthogonal, W^T W = I_k, drawn from the
  Haar measure on the Stiefel manifold by a sign-fixed reduced QR of a standard Gaussian matrix.
* ``sample`` (PaDiM): W is k distinct columns of the identity, i.e. a random channel subset.

W is always drawn on the CPU with NumPy from ``seed``, so CPU and GPU runs use the same matrix, and
it is saved with the model: it is never re-drawn at load time.
"""
import numpy as np

from utils import UserError


def _ortho(n_features, k, rng):
    g = rng.standard_normal((n_features, k))
    q, r = np.linalg.qr(g, mode="reduced")
    signs = np.sign(np.diag(r))
    signs[signs == 0] = 1.0
    return q * signs[None, :]


def _sample(n_features, k, rng):
    idx = np.sort(rng.choice(n_features, size=k, replace=False))
    w = np.zeros((n_features, k))
    w[idx, np.arange(k)] = 1.0
    return w


PROJECTIONS = {"ortho": _ortho, "sample": _sample}


def make_projection(method, n_features, k, seed):
    """Draw the projection matrix.

    Args:
        method: 'ortho' or 'sample'.
        n_features: F, channels of the concatenated embedding.
        k: reduced dimension, 1 <= k <= F.
        seed: integer seed of the NumPy generator.

    Returns:
        W: float32 ndarray of shape [F, k].
    """
    if method not in PROJECTIONS:
        raise UserError(f"unknown method '{method}': choose one of {', '.join(sorted(PROJECTIONS))}")
    if not 1 <= k <= n_features:
        raise UserError(f"--k {k} is out of range: it must be between 1 and the feature "
                        f"dimension {n_features} of this backbone")
    rng = np.random.default_rng(seed)
    return PROJECTIONS[method](n_features, k, rng).astype(np.float32)
