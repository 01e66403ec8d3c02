"""The pairing the parity tests use: near-tied items may trade places, nothing may differ by more than
the tolerance."""

import numpy as np
import pytest

from tests.upn.near_ties import pair_near_ties

ORDER = np.array([3.8, 2.66040, 2.66035, 2.5, 1.0])  # slots 1 and 2 are 5e-5 apart: a near-tie
VALUES = np.array([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6], [0.7, 0.8], [0.9, 1.0]])
IDS = np.array([17, 4, 99, 8, 23])


def test_identical_outputs_pair_in_place():
    assert pair_near_ties(ORDER, VALUES, VALUES + 5e-5, 1e-4, 1e-4, IDS, IDS).tolist() == [0, 1, 2, 3, 4]


def test_near_tied_items_may_trade_places():
    swapped = [0, 2, 1, 3, 4]
    perm = pair_near_ties(ORDER, VALUES, VALUES[swapped], 1e-4, 1e-4, IDS, IDS[swapped])
    assert perm.tolist() == [0, 2, 1, 3, 4]


def test_items_that_are_not_tied_may_not():
    swapped = [0, 1, 3, 2, 4]  # 2.66035 and 2.5 are far apart
    with pytest.raises(AssertionError, match="without a counterpart"):
        pair_near_ties(ORDER, VALUES, VALUES[swapped], 1e-4, 1e-4, IDS, IDS[swapped])


def test_a_large_difference_fails_even_in_a_tie():
    got = VALUES[[0, 2, 1, 3, 4]].copy()
    got[1, 0] += 1e-3
    with pytest.raises(AssertionError, match="first 2"):
        pair_near_ties(ORDER, VALUES, got, 1e-4, 1e-4)
    with pytest.raises(AssertionError):  # the same values from other proposals
        pair_near_ties(ORDER, VALUES, VALUES, 1e-4, 1e-4, IDS, IDS[[0, 1, 2, 4, 3]])
