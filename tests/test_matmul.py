"""The matmul variants of `01_matmul` against `torch.matmul`, including the edge cases."""
import pytest
import torch

from exp.matmul import MATMUL_VARIANTS, check_matmul_shapes, matmul_gflops, matmul_python, median_times
from exp.testing import test_near

SHAPES = [(5, 784, 10), (1, 7, 3), (4, 6, 1), (1, 1, 1), (1, 9, 1), (3, 1, 5), (17, 33, 8)]


@pytest.mark.parametrize("name", list(MATMUL_VARIANTS))
@pytest.mark.parametrize("m,k,n", SHAPES)
def test_variant_equals_torch_matmul(name, m, k, n):
    g = torch.Generator().manual_seed(m * 1000 + k * 10 + n)
    a, b = torch.randn(m, k, generator=g), torch.randn(k, n, generator=g)
    result = MATMUL_VARIANTS[name](a, b)
    assert result.shape == (m, n) and result.dtype == torch.float32
    test_near(result, torch.matmul(a, b), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", list(MATMUL_VARIANTS))
def test_variant_in_float64(name):
    a, b = torch.randn(6, 20, dtype=torch.float64), torch.randn(20, 4, dtype=torch.float64)
    result = MATMUL_VARIANTS[name](a, b)
    assert result.dtype == torch.float64
    test_near(result, a @ b, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("name", list(MATMUL_VARIANTS))
@pytest.mark.parametrize("a_shape,b_shape", [((5, 784), (10, 784)), ((1, 3), (4, 1)), ((3, 2), (3, 2))])
def test_shape_mismatch_names_both_shapes(name, a_shape, b_shape):
    with pytest.raises(ValueError) as error:
        MATMUL_VARIANTS[name](torch.zeros(a_shape), torch.zeros(b_shape))
    assert str(a_shape) in str(error.value) and str(b_shape) in str(error.value)


@pytest.mark.parametrize("a_shape,b_shape", [((3,), (3, 2)), ((2, 3), (3,)), ((2, 2, 2), (2, 2))])
def test_non_matrices_are_rejected(a_shape, b_shape):
    with pytest.raises(ValueError, match="two matrices") as error:
        check_matmul_shapes(torch.zeros(a_shape), torch.zeros(b_shape))
    assert str(a_shape) in str(error.value) and str(b_shape) in str(error.value)


def test_pure_python_works_on_integers_like_torch():
    a, b = torch.arange(6).view(2, 3), torch.arange(12).view(3, 4)
    assert torch.equal(matmul_python(a, b), a @ b)


def test_median_times_interleaves_and_takes_the_median():
    calls = []
    medians = median_times({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3)
    assert calls == ["a", "b"] * 3
    assert set(medians) == {"a", "b"} and all(t >= 0 for t in medians.values())


def test_gflops():
    assert matmul_gflops((1000, 1000), (1000, 1000), 2.0) == pytest.approx(1.0)
