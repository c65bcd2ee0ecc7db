"""The pure merge functions against the sequences of layers they replace."""

import torch
import torch.nn.functional as F

from repsr.arch import merge


def _rand(*shape):
    return torch.randn(*shape, dtype=torch.float64)


def test_fuse_bn_matches_batch_norm():
    kernel, bias = _rand(5, 4, 3, 3), _rand(5)
    mean, var, gamma, beta = _rand(5), _rand(5).abs() + 0.1, _rand(5), _rand(5)
    x = _rand(2, 4, 7, 6)
    expected = F.batch_norm(F.conv2d(x, kernel, bias, padding=1), mean, var, gamma, beta, False, 0.0, 1e-5)
    fused = merge.fuse_bn(kernel, bias, mean, var, gamma, beta, 1e-5)
    assert torch.allclose(F.conv2d(x, *fused, padding=1), expected, atol=1e-12)


def test_pad_to_keeps_1x1_and_asymmetric_kernels_equal():
    x = _rand(1, 3, 6, 5)
    for shape, padding in [((1, 1), 0), ((3, 1), (1, 0)), ((1, 3), (0, 1))]:
        kernel = _rand(2, 3, *shape)
        padded = merge.pad_to(kernel)
        assert padded.shape == (2, 3, 3, 3)
        assert torch.allclose(
            F.conv2d(x, padded, padding=1), F.conv2d(x, kernel, padding=padding), atol=1e-12
        )


def test_compose_kxk_then_1x1():
    first, second = (_rand(6, 3, 3, 3), _rand(6)), (_rand(4, 6, 1, 1), _rand(4))
    x = _rand(2, 3, 8, 9)
    expected = F.conv2d(F.conv2d(x, *first, padding=1), *second)
    assert torch.allclose(F.conv2d(x, *merge.compose_kxk_1x1(first, second), padding=1), expected, atol=1e-12)


def test_compose_1x1_then_kxk_is_exact_with_value_padding_only():
    first, second = (_rand(6, 3, 1, 1), _rand(6)), (_rand(4, 6, 3, 3), _rand(4))
    x = _rand(2, 3, 8, 9)
    merged = F.conv2d(x, *merge.compose_1x1_kxk(first, second), padding=1)
    mid = F.conv2d(x, *first)
    exact = F.conv2d(merge.pad_with_values(mid, first[1]), *second)
    zero_padded = F.conv2d(mid, *second, padding=1)
    assert torch.allclose(merged, exact, atol=1e-12)
    # with plain zero padding the borders differ: the reason for value padding
    assert not torch.allclose(merged[..., 0, :], zero_padded[..., 0, :], atol=1e-3)
    assert torch.allclose(merged[..., 1:-1, 1:-1], zero_padded[..., 1:-1, 1:-1], atol=1e-12)


def test_identity_and_avgpool_kernels():
    x = _rand(1, 4, 5, 5)
    kernel, bias = merge.identity_kernel(4, dtype=torch.float64)
    assert torch.equal(F.conv2d(x, kernel, bias, padding=1), x)
    pool = merge.avgpool_kernel(4, dtype=torch.float64)
    expected = F.avg_pool2d(F.pad(x, (1, 1, 1, 1)), 3, stride=1)
    assert torch.allclose(F.conv2d(x, pool, padding=1), expected, atol=1e-12)


def test_depthwise_to_full_and_add_branches():
    depthwise, x = _rand(3, 1, 3, 3), _rand(1, 3, 6, 6)
    full = merge.depthwise_to_full(depthwise)
    assert torch.allclose(
        F.conv2d(x, full, padding=1), F.conv2d(x, depthwise, padding=1, groups=3), atol=1e-12
    )
    a, b = (_rand(2, 3, 3, 3), _rand(2)), (_rand(2, 3, 3, 3), _rand(2))
    summed = merge.add_branches(a, b)
    expected = F.conv2d(x, *a, padding=1) + F.conv2d(x, *b, padding=1)
    assert torch.allclose(F.conv2d(x, *summed, padding=1), expected, atol=1e-12)
