"""Comparing UPN outputs with the official ones when near-ties may reorder them.

The two-stage selection keeps the encoder's top-k proposals in score order, and the sorted outputs are in
score order too. Two scores closer than the arithmetic noise between two machines (summation order,
SIMD width) may come out in either order, which moves their queries to each other's slots. The parity
tests therefore compare item by item after pairing each reference item with one of ours, where an item
may only move among reference positions whose ordering scores are within ``tie`` of its own; every
paired value must still agree within the tolerance. A large difference anywhere fails.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from scipy.optimize import linear_sum_assignment


def pair_near_ties(order_scores: np.ndarray, want: np.ndarray, got: np.ndarray, tie: float, tol: float,
                   want_ids: Optional[np.ndarray] = None, got_ids: Optional[np.ndarray] = None) -> np.ndarray:
    """Pair reference items with ours.

    Args:
        order_scores: (N,) the reference's scores that define the order (e.g. the top-k logits).
        want, got: (N, D) the reference's and our values per position.
        tie: positions j and k may exchange items when ``|order_scores[j] - order_scores[k]| <= tie``.
        tol: paired values must agree within ``tol`` (absolute, every component).
        want_ids, got_ids: (N,) identities that must be equal in a pair (e.g. the selected proposals).

    Returns:
        ``perm`` (N,): our position paired with reference position j is ``perm[j]``.

    Raises:
        AssertionError: naming the reference positions that have no counterpart.
    """
    order_scores = np.asarray(order_scores, dtype=np.float64).reshape(-1)
    want = np.asarray(want, dtype=np.float64).reshape(len(order_scores), -1)
    got = np.asarray(got, dtype=np.float64).reshape(len(order_scores), -1)
    exchangeable = np.abs(order_scores[:, None] - order_scores[None, :]) <= tie
    diff = np.abs(want[:, None, :] - got[None, :, :]).max(axis=-1)  # (reference j, ours k)
    allowed = exchangeable & (diff <= tol)
    if want_ids is not None:
        allowed &= np.asarray(want_ids).reshape(-1, 1) == np.asarray(got_ids).reshape(1, -1)
    rows, perm = linear_sum_assignment(~allowed)  # cost 0 where a pair is allowed, 1 where not
    bad = [int(j) for j, k in zip(rows, perm) if not allowed[j, k]]
    if bad:
        j = bad[0]
        raise AssertionError(
            f"{len(bad)} reference position(s) without a counterpart within {tol} among near-tied positions "
            f"(tie {tie}), first {j}: same-position difference {diff[j, j]:.3g}, smallest among exchangeable "
            f"positions {np.where(exchangeable[j], diff[j], np.inf).min():.3g}")
    return perm
