"""Precision tables against tables written out by hand from METHOD.md."""

import math

import pytest
import torch

from pccore_plugins.precision import (
    Constant,
    ConstantParams,
    Decaying,
    DecayingParams,
    Spiking,
    SpikingParams,
)


def test_constant_is_all_ones():
    table = Constant(ConstantParams()).table(3, 4)
    assert table.inference.tolist() == [[1.0] * 3] * 4
    assert table.learning.tolist() == [1.0] * 3


def test_spiking_reference_defaults_L3_T4():
    # spike at t == L - l: t=0 -> l=3, t=1 -> l=2, t=2 -> l=1, t=3 -> none
    b = 0.001
    expected = [[b, b, 1.0], [b, 1.0, b], [1.0, b, b], [b, b, b]]
    table = Spiking(SpikingParams()).table(3, 4)
    assert table.inference.tolist() == expected
    assert table.learning.tolist() == [1.0, 1.0, 1.0]
    assert table.inference.dtype == torch.float64


def test_spiking_paper_parameters_and_learning_row_from_table():
    # paper eq. 4: peak 1/lr_x, base 1; learning row = the row at t = T (= 2 here, spike on l = 1)
    table = Spiking(SpikingParams(peak=1 / 0.5, base=1.0, learning="table")).table(3, 2)
    assert table.inference.tolist() == [[1.0, 1.0, 2.0], [1.0, 2.0, 1.0]]
    assert table.learning.tolist() == [2.0, 1.0, 1.0]


def test_decaying_paper_L2_T3_k1():
    e = math.exp
    # layer 2 (L - l = 0): j = t, normaliser sum_{j=0..3} e^-j ; layer 1 (L - l = 1): j = t - 1, sum_{j=0..2}
    s2 = 1 + e(-1) + e(-2) + e(-3)
    s1 = 1 + e(-1) + e(-2)
    expected = [
        [1.0, 1 / s2],
        [1 / s1, e(-1) / s2],
        [e(-1) / s1, e(-2) / s2],
    ]
    table = Decaying(DecayingParams(k=1.0, variant="paper", learning="table")).table(2, 3)
    assert torch.allclose(table.inference, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-15)
    assert torch.allclose(table.learning, torch.tensor([e(-2) / s1, e(-3) / s2], dtype=torch.float64))


@pytest.mark.parametrize("k", [1.0, 1.5, 2.0])
def test_decaying_paper_weights_of_a_layer_sum_to_one_from_the_wavefront_to_T(k):
    L, T = 4, 6
    table = Decaying(DecayingParams(k=k, learning="table")).table(L, T)
    full = torch.cat([table.inference, table.learning[None]])
    for l in range(1, L + 1):
        assert float(full[L - l :, l - 1].sum()) == pytest.approx(1.0, abs=1e-12)


def test_decaying_reference_L2_T3():
    e = math.exp
    # layer 2: j = t; S = sum_{j=0..2} e^-j. layer 1: j = t - 1; S = sum_{j=0..1} e^-j
    s2 = 1 + e(-1) + e(-2)
    s1 = 1 + e(-1)
    expected = [
        [1.0, 1.0],
        [1.0, e(-1) * s2 / 100],
        [e(-1) * s1 / 100, e(-2) * s2 / 100],
    ]
    table = Decaying(DecayingParams(variant="reference")).table(2, 3)
    assert torch.allclose(table.inference, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-15)
    assert table.learning.tolist() == [1.0, 1.0]
