"""Disentanglement metrics: how well each code dimension captures one ground-truth factor.

Each metric is a small function over codes ``(N, D)`` (posterior means) and integer factor
codes ``(N, F)``, or, for the two intervention scores, over an ``encode`` function that
maps factor codes to latent codes (the dataset's generator followed by the encoder), so
that batches with one factor held fixed can be drawn. Every function returns a dict that
records the number of points and the scikit-learn version. Factors with a single value
(dSprites' colour) carry no information and are left out, as disentanglement_lib does.

- ``mig``: the mutual information gap (Chen et al. 2018), codes discretised into 20
  equal-width bins per dimension, as in disentanglement_lib.
- ``dci``: disentanglement, completeness and informativeness (Eastwood & Williams 2018),
  from the feature importances of one tree ensemble per factor: bagged trees by default,
  or gradient-boosted trees as disentanglement_lib (slower: one tree per class a stage).
- ``sap``: the separated attribute predictability (Kumar et al. 2018), one linear SVM per
  (dimension, factor).
- ``factorvae_score``: Kim & Mnih (2018): majority vote over the argmin of the normalised
  variance in batches of 64 with one factor fixed.
- ``betavae_score``: Higgins et al. (2017): a linear classifier on the mean absolute
  difference of paired codes sharing one factor.

scikit-learn is an optional dependency (``pip install 'vaelab[scores]'``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from vaelab.config import ConfigError
from vaelab.options import DISENTANGLEMENT_METRICS

__all__ = ["DISENTANGLEMENT_METRICS", "mig", "mutual_information_matrix", "dci", "sap", "factorvae_score",
           "betavae_score", "require_sklearn"]

MIG_BINS = 20
FACTORVAE_BATCH, FACTORVAE_VOTES, FACTORVAE_EVAL_VOTES, FACTORVAE_VARIANCE_POINTS = 64, 800, 400, 10_000
BETAVAE_BATCH, BETAVAE_TRAIN, BETAVAE_EVAL = 64, 600, 300
COLLAPSED_STD = 0.05  # FactorVAE score: dimensions varying less than this are left out


def require_sklearn(what: str = "the disentanglement metrics") -> str:
    """Check that scikit-learn can be imported, before any work.

    Args:
        what: What needs it, for the message.

    Returns:
        scikit-learn's version string.

    Raises:
        vaelab.config.ConfigError: scikit-learn is missing; the message names the extra.

    Examples:
        >>> from vaelab.disentangle import require_sklearn
        >>> isinstance(require_sklearn(), str)
        True
    """
    try:
        import sklearn
    except ImportError:
        raise ConfigError(f"{what} need scikit-learn: pip install 'vaelab[scores]'") from None
    return sklearn.__version__


def _check(codes: np.ndarray, factors: np.ndarray, gap_of: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Codes as float64 and the factors that vary as int64, checked; `gap_of`: the name of a
    metric that compares a factor's two best code dimensions, which needs at least two."""
    codes = np.asarray(codes, dtype=np.float64)
    factors = np.asarray(factors)
    if codes.ndim != 2 or factors.ndim != 2 or len(codes) != len(factors):
        raise ValueError(f"codes (N, D) and factors (N, F) must have one row per point, got {codes.shape} and "
                         f"{factors.shape}")
    if factors.dtype.kind not in "iub":
        raise ValueError(f"factors must be integer codes, got {factors.dtype}")
    if not np.isfinite(codes).all():
        raise ValueError("the codes are not all finite")
    if gap_of and codes.shape[1] < 2:
        raise ValueError(f"{gap_of} needs at least 2 code dimensions")
    varying = np.array([len(np.unique(f)) > 1 for f in factors.T], dtype=bool)
    return codes, factors[:, varying].astype(np.int64)


def _record(n: int) -> dict[str, Any]:
    return {"points": n, "sklearn_version": require_sklearn()}


def discretize(codes: np.ndarray, bins: int = MIG_BINS) -> np.ndarray:
    """Each dimension's values -> equal-width bin numbers 1..bins, as disentanglement_lib."""
    out = np.empty(codes.shape, np.int64)
    for d in range(codes.shape[1]):
        out[:, d] = np.digitize(codes[:, d], np.histogram(codes[:, d], bins)[1][:-1])
    return out


def _entropy(p: np.ndarray, base: int, axis: int = 0) -> np.ndarray:
    """Entropy of (unnormalised) distributions along `axis`, in base `base`."""
    p = p / p.sum(axis=axis, keepdims=True)
    return -(p * np.log(p)).sum(axis=axis) / np.log(base)


def _mi_matrix(codes: np.ndarray, factors: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """I(binned z_d; v_k) (D, F) and H(v_k) (F,) in nats, of checked codes and factors."""
    from sklearn.metrics import mutual_info_score

    binned = discretize(codes, bins)
    mi = np.array([[mutual_info_score(f, b) for f in factors.T] for b in binned.T])  # (D, F)
    mi = mi.reshape(len(binned.T), -1)  # F = 0 (no factor varies): still (D, 0)
    entropy = np.array([mutual_info_score(f, f) for f in factors.T])  # (F,)
    return mi, entropy


def mutual_information_matrix(codes: np.ndarray, factors: np.ndarray, bins: int = MIG_BINS) -> dict[str, Any]:
    """The mutual information between every code dimension and every factor, as MIG computes it.

    Codes are discretised into `bins` equal-width bins per dimension (as ``mig``); each
    entry is I(z_d; v_k) in nats, and divided by the factor's entropy H(v_k) it is the share
    of the factor that dimension holds (1: the dimension determines the factor). Factors
    with a single value are left out, as by every metric here.

    Args:
        codes: Codes ``(N, D)``, e.g. posterior means.
        factors: Integer factor codes ``(N, F)``.
        bins: Bins per code dimension.

    Returns:
        ``mutual_information`` ``(D, F')`` in nats, ``normalized`` ``(D, F')`` (divided by
        each factor's entropy), ``entropy`` ``(F',)``, ``factors``: the indices of the F'
        factors that vary, ``bins``, ``points`` and ``sklearn_version``.

    Examples:
        >>> import numpy as np
        >>> from vaelab.disentangle import mutual_information_matrix
        >>> f = np.stack(np.meshgrid(np.arange(5), np.arange(4), indexing="ij"), -1).reshape(-1, 2)
        >>> r = mutual_information_matrix(f[:, ::-1].astype(float), f)  # z_0 is factor 1, z_1 factor 0
        >>> np.round(r["normalized"], 3).tolist()
        [[0.0, 1.0], [1.0, 0.0]]
    """
    record = _record(len(codes))
    codes, kept = _check(codes, factors)
    raw = np.asarray(factors)
    varying = [k for k in range(raw.shape[1]) if len(np.unique(raw[:, k])) > 1]
    mi, entropy = _mi_matrix(codes, kept, bins)
    return {"mutual_information": mi.tolist(), "normalized": (mi / entropy).tolist(), "entropy": entropy.tolist(),
            "factors": varying, "bins": bins, **record}


def mig(codes: np.ndarray, factors: np.ndarray, bins: int = MIG_BINS) -> dict[str, Any]:
    """The mutual information gap (Chen et al. 2018).

    Per factor, the gap between the two code dimensions with the most mutual information
    with it, divided by the factor's entropy; averaged over factors. Codes are discretised
    into `bins` equal-width bins per dimension.

    Args:
        codes: Codes ``(N, D)``, e.g. posterior means.
        factors: Integer factor codes ``(N, F)``.
        bins: Bins per code dimension.

    Returns:
        ``mig``, ``mig_per_factor`` (F,), ``mutual_information`` ``(D, F)`` in nats, ``bins``,
        ``points`` and ``sklearn_version``.

    Examples:
        >>> import numpy as np
        >>> from vaelab.disentangle import mig
        >>> f = np.stack(np.meshgrid(np.arange(5), np.arange(4), indexing="ij"), -1).reshape(-1, 2)
        >>> round(mig(f.astype(float), f)["mig"], 3)
        1.0
    """
    record = _record(len(codes))
    codes, factors = _check(codes, factors, gap_of="MIG")
    mi, entropy = _mi_matrix(codes, factors, bins)
    top = np.sort(mi, axis=0)[::-1]
    per_factor = (top[0] - top[1]) / entropy
    return {"mig": float(per_factor.mean()), "mig_per_factor": per_factor.tolist(),
            "mutual_information": mi.tolist(), "bins": bins, **record}


def _split(n: int, seed: int, test_share: float) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    cut = n - max(1, int(round(n * test_share)))
    return perm[:cut], perm[cut:]


def dci(codes: np.ndarray, factors: np.ndarray, importance: str = "forest", test_share: float = 1 / 3,
        seed: int = 0, n_jobs: int = 1) -> dict[str, Any]:
    """Disentanglement, completeness and informativeness (Eastwood & Williams 2018).

    One classifier per factor predicts it from all D code dimensions; its feature
    importances fill the importance matrix R ``(D, F)``. Disentanglement: 1 - the entropy
    (base F) of each row of R, weighted by the row's share of R. Completeness: 1 - the
    entropy (base D) of each column, weighted likewise. Informativeness: the classifiers'
    mean accuracy on held-out points.

    Args:
        codes: Codes ``(N, D)``.
        factors: Integer factor codes ``(N, F)``.
        importance: ``forest``: 50 bagged trees, each split choosing among all dimensions:
            one tree serves every class, so it stays fast on factors of 32 or 40 values;
            ``gbt``: scikit-learn's GradientBoostingClassifier with its defaults (100
            stages of one tree per class), as disentanglement_lib, for numbers comparable
            with it, slower by about the number of classes.
        test_share: The share of the points held out for informativeness.
        seed: Seed of the split and of the classifiers.
        n_jobs: Threads that grow the forest's trees (``forest`` only; the trees and so
            the result are the same for any number).

    Returns:
        ``dci_disentanglement``, ``dci_completeness``, ``dci_informativeness`` (test accuracy),
        ``dci_informativeness_train``, ``dci_importance`` ``(D, F)``, ``dci_model``,
        ``points``, ``sklearn_version``.

    Examples:
        >>> import numpy as np
        >>> from vaelab.disentangle import dci
        >>> f = np.random.default_rng(0).integers(0, 4, (300, 2))
        >>> r = dci(f.astype(float), f, importance="forest")
        >>> round(r["dci_disentanglement"], 2), round(r["dci_completeness"], 2)
        (1.0, 1.0)
    """
    from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier

    if importance not in ("gbt", "forest"):
        raise ValueError(f"importance must be gbt or forest, got {importance!r}")
    record = _record(len(codes))
    codes, factors = _check(codes, factors)
    train, test = _split(len(codes), seed, test_share)
    d, f = codes.shape[1], factors.shape[1]
    r = np.zeros((d, f))
    acc_train, acc_test = [], []
    for j in range(f):
        model = (GradientBoostingClassifier(random_state=seed) if importance == "gbt"
                 else RandomForestClassifier(50, max_features=None, min_samples_leaf=2, random_state=seed,
                                             n_jobs=n_jobs))
        model.fit(codes[train], factors[train, j])
        r[:, j] = np.abs(model.feature_importances_)
        acc_train.append(float(np.mean(model.predict(codes[train]) == factors[train, j])))
        acc_test.append(float(np.mean(model.predict(codes[test]) == factors[test, j])))
    weights = r if r.sum() > 0 else np.ones_like(r)
    disent = 1 - _entropy(r.T + 1e-11, f, axis=0)  # (D,)
    complete = 1 - _entropy(r + 1e-11, d, axis=0)  # (F,)
    return {"dci_disentanglement": float(np.sum(disent * weights.sum(1) / weights.sum())),
            "dci_completeness": float(np.sum(complete * weights.sum(0) / weights.sum())),
            "dci_informativeness": float(np.mean(acc_test)), "dci_informativeness_train": float(np.mean(acc_train)),
            "dci_importance": r.tolist(), "dci_model": importance, **record}


def sap(codes: np.ndarray, factors: np.ndarray, test_share: float = 1 / 3, seed: int = 0) -> dict[str, Any]:
    """The separated attribute predictability score (Kumar et al. 2018).

    For each (dimension, factor), a linear SVM (C = 0.01, balanced classes, on the codes
    as they are, as disentanglement_lib) predicts the factor from that one dimension; its held-out accuracy
    fills the score matrix ``(D, F)``. SAP is the mean over factors of the gap between the
    two best dimensions. A one-dimensional linear classifier can only tell a few classes
    apart, so even a perfect code scores below 1 on factors with many values.

    Args:
        codes: Codes ``(N, D)``.
        factors: Integer factor codes ``(N, F)``.
        test_share: The share of the points held out.
        seed: Seed of the split.

    Returns:
        ``sap``, ``sap_matrix`` ``(D, F)``, ``points``, ``sklearn_version``.

    Examples:
        >>> import numpy as np
        >>> from vaelab.disentangle import sap
        >>> f = np.random.default_rng(0).integers(0, 2, (300, 2))
        >>> round(sap(f.astype(float), f)["sap"], 1)
        0.5
    """
    from sklearn.svm import LinearSVC

    record = _record(len(codes))
    codes, factors = _check(codes, factors, gap_of="SAP")
    train, test = _split(len(codes), seed, test_share)
    z = codes  # as they are, as disentanglement_lib: with C fixed, the score depends on the codes' scale
    score = np.zeros((codes.shape[1], factors.shape[1]))
    for i in range(codes.shape[1]):
        for j in range(factors.shape[1]):
            svm = LinearSVC(C=0.01, class_weight="balanced", random_state=seed)
            svm.fit(z[train, i : i + 1], factors[train, j])
            score[i, j] = np.mean(svm.predict(z[test, i : i + 1]) == factors[test, j])
    top = np.sort(score, axis=0)[::-1]
    return {"sap": float(np.mean(top[0] - top[1])), "sap_matrix": score.tolist(), **record}


def _random_factors(rng: np.random.Generator, sizes: tuple[int, ...], n: int) -> np.ndarray:
    return np.stack([rng.integers(0, s, n) for s in sizes], axis=1)  # (n, F)


def _factorvae_votes(encode: Callable[[np.ndarray], np.ndarray], sizes: tuple[int, ...], votes: int,
                     scale: np.ndarray, active: np.ndarray, rng: np.random.Generator,
                     batch: int = FACTORVAE_BATCH) -> np.ndarray:
    """Votes ``(F, D)``: how often fixing factor k made dimension d the least variable
    (variance over `batch` points divided by its global variance `scale`)."""
    varying = [k for k, s in enumerate(sizes) if s > 1]
    counts = np.zeros((len(sizes), len(scale)), np.int64)
    ks = rng.choice(varying, votes)
    f = _random_factors(rng, sizes, votes * batch).reshape(votes, batch, len(sizes))
    f[np.arange(votes), :, ks] = f[np.arange(votes), 0, ks][:, None]  # factor k fixed in each batch
    z = np.asarray(encode(f.reshape(-1, len(sizes))), dtype=np.float64).reshape(votes, batch, -1)
    ratio = z.var(axis=1, ddof=1)[:, active] / scale[active]  # (votes, D_active)
    np.add.at(counts, (ks, np.flatnonzero(active)[ratio.argmin(1)]), 1)
    return counts


def factorvae_score(encode: Callable[[np.ndarray], np.ndarray], sizes: tuple[int, ...],
                    votes: tuple[int, int] = (FACTORVAE_VOTES, FACTORVAE_EVAL_VOTES),
                    batch: int = FACTORVAE_BATCH, variance_points: int = FACTORVAE_VARIANCE_POINTS,
                    seed: int = 0) -> dict[str, Any]:
    """The FactorVAE disentanglement score (Kim & Mnih 2018).

    Each vote fixes one factor k at a random value across `batch` random points, encodes
    them and finds the dimension with the least variance relative to its variance over
    `variance_points` random points (dimensions varying with a standard deviation below
    0.05 left out as collapsed). A majority-vote classifier maps each dimension to the
    factor that most often made it least variable; the score is its accuracy on fresh votes.

    Args:
        encode: Factor codes ``(K, F)`` int -> latent codes ``(K, D)``, e.g. the dataset's
            images for those factors through the encoder.
        sizes: The number of values of each factor, ``(F,)``.
        votes: (fit, eval): votes the classifier is fitted on, and fresh votes it is scored on.
        batch: Points per vote.
        variance_points: Points of the global variance.
        seed: Seed of the draws.

    Returns:
        ``factorvae_score`` (eval accuracy), ``factorvae_train_accuracy``,
        ``factorvae_active_dims``, ``factorvae_votes``, ``factorvae_batch``, ``points``
        (codes encoded), ``sklearn_version``.

    Examples:
        >>> import numpy as np
        >>> from vaelab.disentangle import factorvae_score
        >>> r = factorvae_score(lambda f: f.astype(float), (3, 5, 4), votes=(50, 50))
        >>> r["factorvae_score"], r["factorvae_active_dims"]
        (1.0, 3)
    """
    version = require_sklearn()
    votes, eval_votes = votes
    rng = np.random.default_rng(seed)
    z = np.asarray(encode(_random_factors(rng, sizes, variance_points)), dtype=np.float64)
    scale = z.var(axis=0, ddof=1)
    active = np.sqrt(scale) >= COLLAPSED_STD
    points = variance_points + (votes + eval_votes) * batch * bool(active.any())  # no votes when all collapsed
    base = {"factorvae_votes": votes, "factorvae_eval_votes": eval_votes, "factorvae_batch": batch,
            "factorvae_active_dims": int(active.sum()), "points": points, "sklearn_version": version}
    if not active.any():
        return {"factorvae_score": 0.0, "factorvae_train_accuracy": 0.0, **base}
    train = _factorvae_votes(encode, sizes, votes, scale, active, rng, batch)
    test = _factorvae_votes(encode, sizes, eval_votes, scale, active, rng, batch)
    vote_for = train.argmax(axis=0)  # (D,) each dimension's factor
    cols = np.arange(train.shape[1])
    return {"factorvae_score": float(test[vote_for, cols].sum() / test.sum()),
            "factorvae_train_accuracy": float(train[vote_for, cols].sum() / train.sum()), **base}


def _betavae_points(encode: Callable[[np.ndarray], np.ndarray], sizes: tuple[int, ...], n: int, batch: int,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    varying = [k for k, s in enumerate(sizes) if s > 1]
    ks = rng.choice(varying, n)
    a = _random_factors(rng, sizes, n * batch).reshape(n, batch, len(sizes))
    b = _random_factors(rng, sizes, n * batch).reshape(n, batch, len(sizes))
    b[np.arange(n), :, ks] = a[np.arange(n), :, ks]  # the pair shares factor k
    za = np.asarray(encode(a.reshape(-1, len(sizes))), dtype=np.float64).reshape(n, batch, -1)
    zb = np.asarray(encode(b.reshape(-1, len(sizes))), dtype=np.float64).reshape(n, batch, -1)
    return np.abs(za - zb).mean(axis=1), ks  # (n, D), (n,)


def betavae_score(encode: Callable[[np.ndarray], np.ndarray], sizes: tuple[int, ...], n_train: int = BETAVAE_TRAIN,
                  n_eval: int = BETAVAE_EVAL, batch: int = BETAVAE_BATCH, seed: int = 0) -> dict[str, Any]:
    """The beta-VAE disentanglement score (Higgins et al. 2017).

    Each point draws `batch` pairs of random factor codes that share one factor k, and
    takes the mean absolute difference of their latent codes ``(D,)``; a linear classifier
    (logistic regression) learns to tell k from it. The score is its accuracy on `n_eval`
    fresh points.

    Args:
        encode: Factor codes ``(K, F)`` int -> latent codes ``(K, D)``.
        sizes: The number of values of each factor, ``(F,)``.
        n_train: Points the classifier is fitted on.
        n_eval: Points it is scored on.
        batch: Pairs per point.
        seed: Seed of the draws and the classifier.

    Returns:
        ``betavae_score`` (eval accuracy), ``betavae_train_accuracy``, ``betavae_batch``,
        ``points`` (codes encoded), ``sklearn_version``.

    Examples:
        >>> import numpy as np
        >>> from vaelab.disentangle import betavae_score
        >>> r = betavae_score(lambda f: f.astype(float), (3, 5, 4), n_train=100, n_eval=50)
        >>> r["betavae_score"]
        1.0
    """
    from sklearn.linear_model import LogisticRegression

    version = require_sklearn()
    rng = np.random.default_rng(seed)
    x_train, y_train = _betavae_points(encode, sizes, n_train, batch, rng)
    x_eval, y_eval = _betavae_points(encode, sizes, n_eval, batch, rng)
    model = LogisticRegression(max_iter=2000, random_state=seed).fit(x_train, y_train)
    return {"betavae_score": float(np.mean(model.predict(x_eval) == y_eval)),
            "betavae_train_accuracy": float(np.mean(model.predict(x_train) == y_train)),
            "betavae_batch": batch, "betavae_train_points": n_train, "betavae_eval_points": n_eval,
            "points": 2 * batch * (n_train + n_eval), "sklearn_version": version}
