import numpy as np
import paddle
import pytest
from scipy.ndimage import gaussian_filter
from scipy.spatial.distance import mahalanobis as scipy_mahalanobis
from skimage.transform import resize as sk_resize

from models.backbone import Backbone
from models.gaussian import PatchGaussian, mahalanobis
from models.orthoad import OrthoAD
from models.postprocess import AnomalyMapHead, bilinear_matrix, blur_matrix, gaussian_kernel1d
from models.projection import make_projection
from utils import UserError


def _two_pass(y):
    """float64 two-pass mean and covariance per position: y [N, P, k]."""
    n, _, k = y.shape
    yp = y.transpose(1, 0, 2).astype(np.float64)
    mu = yp.mean(axis=1)
    c = yp - mu[:, None]
    return mu, np.einsum("pnk,pnl->pkl", c, c) / (n - 1) + 0.01 * np.eye(k)


def test_streaming_gaussian_matches_two_pass_float64():
    rng = np.random.default_rng(0)
    # large offset, small spread: naive float32 sums of squares would lose the variance
    y = (1000.0 + rng.standard_normal((37, 20, 12))).astype(np.float32)
    g = PatchGaussian(eps=0.01, buffer=16)     # several flushes, one partly filled
    for i in range(0, 37, 8):            # uneven last batch
        g.partial_fit(y[i:i + 8])
    g.finalize()
    mu, cov = _two_pass(y)
    assert g.n_samples_seen_ == 37
    np.testing.assert_allclose(g.mean_, mu, rtol=0, atol=1e-4)
    np.testing.assert_allclose(g.covariance(), cov, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(g.precision_, np.linalg.inv(cov), rtol=1e-5, atol=1e-5)
    assert g.precision_.dtype == np.float32


def test_mahalanobis_matches_per_position_scipy():
    rng = np.random.default_rng(1)
    y = rng.standard_normal((20, 9, 6)).astype(np.float32)
    g = PatchGaussian().fit([y[:10], y[10:]])
    test = rng.standard_normal((2, 9, 6)).astype(np.float32) * 3
    d = mahalanobis(paddle.to_tensor(test), paddle.to_tensor(g.mean_),
                    paddle.to_tensor(g.precision_)).numpy()
    mu, cov = _two_pass(y)
    vi = np.linalg.inv(cov)
    for b in range(2):
        for p in range(9):
            ref = scipy_mahalanobis(test[b, p], mu[p], vi[p])
            assert d[b, p] == pytest.approx(ref, rel=1e-4)


def test_fewer_images_than_k_is_regularised_by_eps():
    """5 images, k = 100: the sample covariance is singular; + eps I makes it invertible. The
    precision equals the float64 inverse of the two-pass covariance + eps I, and the distances
    SciPy's."""
    y = np.random.default_rng(2).standard_normal((5, 4, 100)).astype(np.float32)
    g = PatchGaussian().fit([y])
    for p in range(4):
        cov = np.cov(y[:, p].astype(np.float64), rowvar=False) + 0.01 * np.eye(100)
        np.testing.assert_allclose(g.precision_[p], np.linalg.inv(cov), rtol=2e-3, atol=2e-3)
    d = mahalanobis(paddle.to_tensor(y), paddle.to_tensor(g.mean_), paddle.to_tensor(g.precision_))
    for b in range(5):
        ref = scipy_mahalanobis(y[b, 1], g.mean_[1], g.precision_[1].astype(np.float64))
        assert d.numpy()[b, 1] == pytest.approx(ref, rel=1e-3)


def test_gaussian_needs_two_images():
    g = PatchGaussian().partial_fit(np.zeros((1, 4, 3), dtype=np.float32))
    with pytest.raises(UserError, match="at least 2"):
        g.finalize()


@pytest.mark.parametrize("method", ["ortho", "sample"])
def test_projection_is_semi_orthogonal_and_seeded(method):
    w = make_projection(method, 448, 100, seed=3)
    assert w.shape == (448, 100) and w.dtype == np.float32
    np.testing.assert_allclose(w.T @ w, np.eye(100), atol=1e-5)
    np.testing.assert_array_equal(w, make_projection(method, 448, 100, seed=3))
    assert not np.array_equal(w, make_projection(method, 448, 100, seed=4))
    if method == "sample":
        assert set(np.unique(w)) == {0.0, 1.0} and (w.sum(axis=0) == 1).all()
        assert len(set(np.argmax(w, axis=0))) == 100           # distinct channels


def test_projection_rejects_bad_k_and_method():
    with pytest.raises(UserError, match="between 1 and the feature dimension 448"):
        make_projection("ortho", 448, 449, 0)
    with pytest.raises(UserError, match="unknown method 'pca'"):
        make_projection("pca", 448, 10, 0)


@pytest.mark.parametrize("shape", [(70, 45), (10, 7)])      # 7, 10 < radius 16: multiple folds
def test_blur_matrix_matches_scipy_gaussian_filter(shape):
    x = np.random.default_rng(4).random(shape) * 10
    out = blur_matrix(shape[0]) @ x @ blur_matrix(shape[1]).T
    np.testing.assert_allclose(out, gaussian_filter(x, sigma=4), atol=1e-12)  # 'reflect', 4.0
    assert len(gaussian_kernel1d(4.0)) == 33


@pytest.mark.parametrize("n_in,n_out", [(16, 64), (64, 256), (13, 50), (5, 18)])
def test_bilinear_matrix_matches_paddle_and_skimage(n_in, n_out):
    x = np.random.default_rng(5).random((n_in, n_in))
    u = bilinear_matrix(n_out, n_in)
    ref = sk_resize(x, (n_out, n_out), order=1, mode="edge", anti_aliasing=False)
    np.testing.assert_allclose(u @ x @ u.T, ref, atol=1e-12)
    pd = paddle.nn.functional.interpolate(paddle.to_tensor(x.astype("float32"))[None, None],
                                          size=[n_out, n_out], mode="bilinear",
                                          align_corners=False).numpy()[0, 0]
    np.testing.assert_allclose(u @ x @ u.T, pd, atol=1e-5)


def test_head_is_bilinear_upsampling_then_scipy_blur():
    rng = np.random.default_rng(5)
    dist = rng.random((2, 16, 16)).astype(np.float32)
    out = AnomalyMapHead(64, 16)(paddle.to_tensor(dist)).numpy()
    assert out.shape == (2, 1, 64, 64)
    for b in range(2):
        up = sk_resize(dist[b].astype(np.float64), (64, 64), order=1, mode="edge",
                       anti_aliasing=False)
        np.testing.assert_allclose(out[b, 0], gaussian_filter(up, sigma=4), atol=1e-5)


@pytest.mark.parametrize("size", [(64, 64), (72, 72), (64, 112), (72, 40)])  # 72: 18 / 9 / 5
def test_per_layer_projection_equals_projecting_the_concatenation(size):
    bb = Backbone("resnet18", pretrained=False, seed=0)
    w = make_projection("ortho", 448, 16, seed=0)
    det = OrthoAD(bb, w, size)
    x = paddle.to_tensor(np.random.default_rng(6).standard_normal((2, 3, *size))
                         .astype("float32"))
    with paddle.no_grad():
        f1, f2, f3 = bb(x)
        y = det.embed(x).numpy()
        g = list(f1.shape[2:])
        up = [paddle.nn.functional.interpolate(f, size=g, mode="nearest").numpy()
              for f in (f2, f3)]
    emb = np.concatenate([f1.numpy()] + up, axis=1)                # [B, 448, h, w]
    ref = np.einsum("bfhw,fk->bhwk", emb.astype(np.float64), w.astype(np.float64))
    ref = ref.reshape(2, g[0] * g[1], 16)                          # [B, P, k], position-major
    assert tuple(g) == det.grid_hw == (-(-size[0] // 4), -(-size[1] // 4))
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)


def test_random_backbone_is_seeded_and_fingerprinted():
    a = Backbone("resnet18", pretrained=False, seed=0)
    b = Backbone("resnet18", pretrained=False, seed=0)
    c = Backbone("resnet18", pretrained=False, seed=1)
    assert a.weights_sha256 == b.weights_sha256 != c.weights_sha256
    assert a.weights_source == "random:seed=0"


def test_missing_weights_file_is_a_user_error(tmp_path):
    from pipeline.backbones import read_weights_file
    with pytest.raises(UserError, match="--weights file"):
        read_weights_file(str(tmp_path / "nope.pdparams"))


@pytest.mark.parametrize("size,target", [((8, 8), [16, 16]), ((4, 4), [16, 16]),
                                         ((5, 5), [18, 18]), ((14, 14), [54, 54]),
                                         ((13, 27), [50, 54]), ((25, 25), [50, 50])])
def test_upsample_nearest_equals_paddle_interpolate(size, target):
    from models.orthoad import upsample_nearest
    y = paddle.randn([2, 3, *size])
    ref = paddle.nn.functional.interpolate(y, size=target, mode="nearest").numpy()
    out = upsample_nearest(y.transpose([0, 2, 3, 1]), target).numpy()      # channels last
    np.testing.assert_array_equal(out, ref.transpose(0, 2, 3, 1))


def test_cells_group_neighbouring_positions():
    from models.gaussian import cell_members
    m = cell_members((4, 6), 2)
    assert m.shape == (6, 4)
    np.testing.assert_array_equal(m[0], [0, 1, 6, 7])              # rows 0-1, columns 0-1
    np.testing.assert_array_equal(m[4], [14, 15, 20, 21])          # rows 2-3, columns 2-3
    assert sorted(m.ravel().tolist()) == list(range(24))
    with pytest.raises(UserError, match="does not divide"):
        cell_members((4, 6), 4)


def _pooled_two_pass(y, members, eps=0.01):
    """float64 Gaussian of each cell from all embeddings of its positions: y [N, P, k]."""
    rows = y.astype(np.float64)[:, members]                        # [N, C, m, k]
    rows = rows.transpose(1, 0, 2, 3).reshape(len(members), -1, y.shape[2])
    mu = rows.mean(axis=1)
    c = rows - mu[:, None]
    return mu, np.einsum("cnk,cnl->ckl", c, c) / (rows.shape[1] - 1) + eps * np.eye(y.shape[2])


def test_cell_gaussian_and_distances_match_a_pooled_float64_oracle():
    from models.gaussian import cell_members
    rng = np.random.default_rng(7)
    grid, k = (6, 8), 5
    members = cell_members(grid, 2)
    y = (20 + rng.standard_normal((23, 48, k)) * rng.uniform(0.5, 2, (1, 48, k))).astype(np.float32)
    g = PatchGaussian(buffer=16, members=members)
    for i in range(0, 23, 5):
        g.partial_fit(y[i:i + 5])
    test = (20 + 2 * rng.standard_normal((3, 48, k))).astype(np.float32)
    q = g.squared_distances(test)                                  # before finalize: Cholesky
    g.finalize()
    mu, cov = _pooled_two_pass(y, members)
    assert g.n_samples_seen_ == 23 and g.mean_.shape == (12, k)
    np.testing.assert_allclose(g.mean_, mu, atol=1e-5)
    np.testing.assert_allclose(g.covariance(), cov, rtol=1e-7, atol=1e-9)
    prec = np.linalg.inv(cov)
    np.testing.assert_allclose(g.precision_, prec, rtol=1e-5, atol=1e-6)
    cell_of = np.empty(48, int)
    cell_of[members] = np.arange(12)[:, None]
    d = test.astype(np.float64) - mu[cell_of]
    ref = np.einsum("bpk,pkl,bpl->bp", d, prec[cell_of], d)
    np.testing.assert_allclose(q, ref, rtol=1e-9)
    det_d = mahalanobis(paddle.to_tensor(test), paddle.to_tensor(g.mean_),
                        paddle.to_tensor(g.precision_),
                        paddle.to_tensor(members.ravel()),
                        paddle.to_tensor(np.argsort(members.ravel()))).numpy()
    np.testing.assert_allclose(det_d, np.sqrt(ref), rtol=1e-4)


def test_merged_gaussians_equal_one_fit():
    """Sums of two Gaussians with different shifts merge into exactly the one-process sums."""
    rng = np.random.default_rng(8)
    y = (500 + rng.standard_normal((30, 10, 4))).astype(np.float32)
    whole = PatchGaussian(buffer=8).fit([y[:7], y[7:19], y[19:]])
    a = PatchGaussian(buffer=8).partial_fit(y[:12])
    b = PatchGaussian(buffer=8).partial_fit(y[12:20] + 0).partial_fit(y[20:])
    assert not np.array_equal(a.state()["shift"], b.state()["shift"])
    a.merge(b).finalize()
    assert a.n_samples_seen_ == 30
    np.testing.assert_allclose(a.covariance(), whole.covariance(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(a.mean_, whole.mean_, rtol=1e-7)
    c = PatchGaussian().merge(PatchGaussian().partial_fit(y)).finalize()   # into an empty one
    np.testing.assert_allclose(c.covariance(), whole.covariance(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("cell", [1, 2])
def test_device_gaussian_matches_the_float64_oracle_on_the_cpu(cell):
    """The statistics path for GPUs (Paddle ops in float64, chunks of cells), run on the CPU."""
    from models import device_gaussian
    from models.device_gaussian import DeviceGaussian
    from models.gaussian import cell_members
    rng = np.random.default_rng(9)
    members = cell_members((6, 8), cell)
    y = (30 + rng.standard_normal((21, 48, 5)) * rng.uniform(0.5, 2, (1, 48, 5))).astype(np.float32)
    old = device_gaussian.CHUNK_BYTES
    device_gaussian.CHUNK_BYTES = 4096                        # several chunks of cells
    try:
        g = DeviceGaussian(members=members if cell > 1 else None)
        for i in range(0, 21, 4):
            g.partial_fit(paddle.to_tensor(y[i:i + 4]))
        test = (30 + 2 * rng.standard_normal((3, 48, 5))).astype(np.float32)
        q = g.squared_distances(test)
        g.finalize()
    finally:
        device_gaussian.CHUNK_BYTES = old
    mu, cov = _pooled_two_pass(y, members)
    np.testing.assert_allclose(g.mean_, mu, atol=1e-5)
    np.testing.assert_allclose(g.covariance(), cov, rtol=1e-9, atol=1e-12)
    prec = np.linalg.inv(cov)
    np.testing.assert_allclose(g.precision_, prec, rtol=1e-5, atol=1e-6)
    cell_of = np.empty(48, int)
    cell_of[members] = np.arange(len(members))[:, None]
    d = test.astype(np.float64) - mu[cell_of]
    np.testing.assert_allclose(q, np.einsum("bpk,pkl,bpl->bp", d, prec[cell_of], d), rtol=1e-9)
    cpu = PatchGaussian(members=members if cell > 1 else None).load_state(g.state())
    np.testing.assert_allclose(cpu.covariance(), cov, rtol=1e-9, atol=1e-12)
