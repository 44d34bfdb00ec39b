"""Berrut rational coding: the math of ApproxIFER (Soleymani, Ali, Mahdavifar, Avestimehr, AAAI 2022).

K queries X_j sit at the data nodes alpha_j; the encoder evaluates the Berrut interpolant u through
(alpha_j, X_j) at N worker nodes beta_i, and every worker runs the *unchanged* model on u(beta_i). The
decoder interpolates whichever coded outputs arrived, again with Berrut's formula, and reads the answers
off at the alpha_j. Berrut's interpolant has no poles on the real line for any distinct nodes, so any
subset of the workers (m >= 1) decodes; accuracy degrades gracefully with fewer arrivals.

All math is float64; coded queries and decoded outputs leave as float32. Shapes: queries ``(K, ...)``,
coded queries ``(N, ...)``, outputs (logits) ``(m, classes)``.
"""

from __future__ import annotations

from itertools import combinations
from math import comb

import numpy as np

from coding.errors import CodingError


def data_nodes(k: int) -> np.ndarray:
    """alpha_j = cos((2j+1) pi / (2K)), j = 0..K-1: Chebyshev points of the first kind (descending in j)."""
    return np.cos((2 * np.arange(k) + 1) * np.pi / (2 * k))


def worker_nodes(n: int) -> np.ndarray:
    """beta_i = cos((2(N-1-i)+1) pi / (2N+1)), i = 0..N-1, ascending: the N zeros of the Chebyshev
    polynomial of the third kind V_N, spread like Chebyshev points over (-1, 1).

    Why beta_i can never equal any alpha_j, for every K and N: cos is injective on [0, pi], so a collision
    needs equal angles, (2p+1)/(2N+1) = (2j+1)/(2K), i.e. 2K(2p+1) = (2j+1)(2N+1). The left side is even,
    the right side odd times odd: no solution. The angles even differ by at least pi / (2K(2N+1)), since
    2K(2p+1) - (2j+1)(2N+1) is a nonzero integer. The same holds for any N, so also for the systematic
    parities (:func:`coded_nodes`).

    The published scripts use cos(i pi / N) (or cos(i pi / (N-1))), whose even denominators collide with
    alpha (beta = alpha = 0 for every odd K with N = K+1). A set with an odd number of nodes symmetric about
    0 contains 0, which is alpha for every odd K, so no symmetric choice can work for all N. Accuracy
    depends mostly on how close the betas fall to the alphas: where cos(i pi / N) does not collide, these
    nodes decode as accurately (mean over K = 8..12, S = 1..3, small CNNs: MNIST .861 vs .859, Fashion-MNIST
    .766 vs .769), while cos(i pi / (N-1)) puts every alpha midway between two betas and loses 15-18 points.
    """
    return np.cos((2 * np.arange(n)[::-1] + 1) * np.pi / (2 * n + 1))


def coded_nodes(k: int, n: int, systematic: bool = False) -> np.ndarray:
    """The node of every worker 0..N-1.

    Non-systematic: ``worker_nodes(n)``. Systematic: workers 0..K-1 serve the originals at alpha_j (the
    interpolant is exact there, so they run X_j itself) and workers K..N-1 the parities at
    ``worker_nodes(n - k)``, which miss every alpha for the reason given in :func:`worker_nodes`.
    """
    if systematic:
        return np.concatenate([data_nodes(k), worker_nodes(n - k)])
    return worker_nodes(n)


def _signs(nodes: np.ndarray) -> np.ndarray:
    """(-1)^position of each node in the sorted order (Berrut's sign rule; ties are not allowed)."""
    order = np.argsort(nodes, kind="stable")
    signs = np.empty(len(nodes))
    signs[order] = (-1.0) ** np.arange(len(nodes))
    return signs


def berrut_weights(nodes: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Berrut's basis ``(len(x), len(nodes))``: row t holds the weights that interpolate at x_t.

    w_l(x) = s_l / (x - z_l) / sum_l' s_l' / (x - z_l'), with s_l = (-1)^(rank of z_l). Each row sums to 1.
    At x_t equal to a node the row is that node's indicator (no 0/0).
    """
    nodes = np.asarray(nodes, dtype=np.float64)
    x = np.atleast_1d(np.asarray(x, dtype=np.float64))
    if nodes.ndim != 1 or len(nodes) == 0:
        raise CodingError(f"Berrut interpolation needs a non-empty 1-D list of nodes, got shape {list(nodes.shape)}")
    if len(np.unique(nodes)) != len(nodes):
        raise CodingError("Berrut interpolation needs distinct nodes; got duplicates")
    diff = x[:, None] - nodes[None, :]
    hit = diff == 0.0
    nearest = np.abs(diff).min(axis=1, keepdims=True)  # scaling by it keeps every term in [-1, 1]: no overflow
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = _signs(nodes)[None, :] * (nearest / diff)
        weights = terms / terms.sum(axis=1, keepdims=True)
    on_node = hit.any(axis=1)
    weights[on_node] = hit[on_node].astype(np.float64)
    if not np.isfinite(weights).all():
        raise CodingError("Berrut weights overflowed: nodes too close together for float64 at these points")
    return weights


def interpolate(nodes: np.ndarray, values: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The Berrut interpolant through (nodes_l, values_l) at the points x; float64 ``(len(x), ...)``."""
    values = np.asarray(values, dtype=np.float64)
    flat = values.reshape(len(values), -1)
    out = berrut_weights(nodes, x) @ flat
    return out.reshape(len(out), *values.shape[1:])


def encode(queries: np.ndarray, n: int, systematic: bool = False) -> np.ndarray:
    """``(K, ...)`` queries -> ``(N, ...)`` float32 coded queries u(node of worker i)."""
    k = len(queries)
    return interpolate(data_nodes(k), queries, coded_nodes(k, n, systematic)).astype(np.float32)


def decode(outputs: np.ndarray, worker_indices: np.ndarray, k: int, n: int, systematic: bool = False) -> np.ndarray:
    """``(m, classes)`` outputs of the workers ``worker_indices`` -> ``(K, classes)`` float32 answers.

    Berrut interpolation through the arrived workers' nodes (signs alternate by position among the arrived
    ones), evaluated at every alpha_j. Systematic: an arrived original is returned exactly.
    """
    nodes = coded_nodes(k, n, systematic)[np.asarray(worker_indices)]
    return interpolate(nodes, outputs, data_nodes(k)).astype(np.float32)


_MAX_SUBSETS = 20_000  # above this many candidate sets, locate greedily (one worker at a time)
MIN_EVIDENCE = 6.0  # a flagged worker must explain this many typical workers' worth of misfit to be dropped


def locate(
    outputs: np.ndarray,
    worker_indices: np.ndarray,
    k: int,
    n: int,
    a: int,
    systematic: bool = False,
    min_evidence: float = MIN_EVIDENCE,
) -> list[int]:
    """Up to ``a`` arrived workers judged corrupted (Byzantine), by worker index, sorted.

    The code is linear over the reals: a linear model's outputs are ``G @ F`` with F the K true outputs and
    ``G = berrut_weights(alpha, arrived nodes)`` (m, K). G is a Cauchy matrix with rows and columns scaled
    by nonzero factors (Berrut's denominator has no real zeros; systematic rows are unit vectors), so every
    K rows are independent: an MDS code that corrects up to (m - K) / 2 errors, so m >= K + 2a suffices
    (the published locator asks for 2K + 2a - 1). We decode it as Berlekamp-Welch decodes Reed-Solomon, but
    in this rational (Berrut) basis and by least squares: project the outputs onto the complement of col(G)
    (the syndrome; SVD, float64) and find the set T of ``a`` workers whose removal explains the most
    syndrome energy. Each output class scores every T by the energy its own fit loses; the scores are summed
    over classes (a weighted vote). Exhaustive over all T when that is cheap, greedy otherwise.

    A nonlinear model leaves honest outputs near, not in, col(G), so T always "explains" something. A member
    of T is returned only if it passes a partial-F outlier test: deleting it (given the rest of T) must cut
    the residual energy by ``min_evidence`` times the residual per remaining degree of freedom, i.e. it
    misfits like that many typical workers together. ``min_evidence=0`` returns all ``a`` (the published
    behaviour). The default 6 keeps groups with no attacker, or an attack weaker than the model's own misfit,
    from losing honest workers, and still catches sign flips. Deployed MNIST CNN, K = 12, A = 1
    (docs/approxifer_results.md): no attack, accuracy .990 vs .975 when always dropping one; sign flip,
    .974 vs .977 (.943 without a locator). Fitting in the encoder's own basis is what makes this work: with
    ``a`` forced, this fit finds the flipped worker 88% of the time, the published polynomial Berlekamp-Welch
    fit 20%, chance 4% (and in development runs one hard vote per class 79%, leave-one-out Berrut residuals
    68%).
    """
    nodes = coded_nodes(k, n, systematic)[np.asarray(worker_indices)]
    y = np.asarray(outputs, dtype=np.float64)
    m = len(nodes)
    if a < 1 or m - k < 2 * a:
        raise CodingError(f"locating a={a} errors needs at least k + 2a = {k + 2 * a} outputs, got {m}")
    u, sv, _ = np.linalg.svd(berrut_weights(data_nodes(k), nodes), full_matrices=True)
    rank = int((sv > sv[0] * 1e-12).sum())
    complement = u[:, rank:] @ u[:, rank:].T  # projector onto the syndrome space
    syndrome = complement @ y
    found = _search(complement, syndrome, m, a)
    evidence = _evidence(complement, syndrome, found, dof=m - rank - a, floor=1e-9 * (y**2).sum() / m)
    return sorted(int(i) for i in np.asarray(worker_indices)[found[evidence >= min_evidence]])


def _search(complement: np.ndarray, syndrome: np.ndarray, m: int, a: int) -> np.ndarray:
    """The a positions whose removal explains the most syndrome energy: exhaustive if cheap, else greedy."""
    if comb(m, a) <= _MAX_SUBSETS:
        subsets = np.array(list(combinations(range(m), a)))
        return subsets[int(np.argmax(_gain(complement, syndrome, subsets)))]
    found = np.empty(0, dtype=np.int64)
    for _ in range(a):
        rest = np.setdiff1d(np.arange(m), found)
        grown = np.column_stack([np.tile(found, (len(rest), 1)), rest])
        found = grown[int(np.argmax(_gain(complement, syndrome, grown)))]
    return found


def _evidence(complement: np.ndarray, syndrome: np.ndarray, found: np.ndarray, dof: int, floor: float) -> np.ndarray:
    """Per member l of ``found``: (gain(found) - gain(found without l)) / (residual energy per degree of freedom)."""
    total = _gain(complement, syndrome, found[None])[0]
    others = np.array([np.delete(found, i) for i in range(len(found))])
    without = _gain(complement, syndrome, others) if others.shape[1] else np.zeros(len(found))
    per_dof = max(((syndrome**2).sum() - total) / max(dof, 1), floor)
    return (total - without) / per_dof


def _gain(complement: np.ndarray, syndrome: np.ndarray, subsets: np.ndarray) -> np.ndarray:
    """Syndrome energy explained by each row T of ``subsets`` (S, t), summed over classes.

    Dropping the rows T from the least-squares fit lowers its residual by r_T' (P_TT)^-1 r_T per class, with P
    the complement projector and r = P y (P is symmetric and idempotent, so (P y)_T = P[:, T]' y).
    """
    return _quadratic_form(complement[subsets[:, :, None], subsets[:, None, :]], syndrome[subsets])


def _quadratic_form(gram: np.ndarray, r: np.ndarray) -> np.ndarray:
    """sum over classes of r' G^-1 r for a batch of small SPD G ``(S, a, a)`` and r ``(S, a, classes)``.

    Gaussian elimination (G = L D L') vectorized over the batch: r' G^-1 r = sum_i (L^-1 r)_i^2 / D_i.
    ``np.linalg.solve`` pays a per-matrix overhead that dominates for thousands of 2x2 or 3x3 systems.
    P_TT is positive definite whenever |T| <= m - K (no vector supported on T is a codeword), so D_i > 0.
    """
    gram, r = gram.copy(), r.copy()
    total = np.zeros(len(gram))
    for i in range(gram.shape[1]):
        pivot = gram[:, i, i]
        total += (r[:, i, :] ** 2).sum(-1) / pivot
        factor = gram[:, i + 1 :, i] / pivot[:, None]
        gram[:, i + 1 :, i + 1 :] -= factor[:, :, None] * gram[:, None, i, i + 1 :]
        r[:, i + 1 :, :] -= factor[:, :, None] * r[:, None, i, :]
    return total
