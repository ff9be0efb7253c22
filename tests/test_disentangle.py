"""The disentanglement metrics on synthetic codes: a perfect code scores the maximum, a
rotation of it scores low, a permutation of the dimensions changes nothing, and MIG
matches a small case computed by hand."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

from vaelab.config import ConfigError
from vaelab.disentangle import betavae_score, dci, factorvae_score, mig, require_sklearn, sap

SIZES = (3, 4, 5)


def grid(repeat: int = 4) -> np.ndarray:
    """Every factor combination `repeat` times, (60 * repeat, 3)."""
    f = np.stack(np.meshgrid(*[np.arange(s) for s in SIZES], indexing="ij"), -1).reshape(-1, len(SIZES))
    return np.tile(f, (repeat, 1))


def rotation(d: int, seed: int = 0) -> np.ndarray:
    """A random rotation that mixes every dimension: of 50 draws, the one whose largest
    entry is smallest (a draw close to the axes would be a near-perfect code)."""
    rng = np.random.default_rng(seed)
    qs = [np.linalg.qr(rng.normal(size=(d, d)))[0] for _ in range(50)]
    return min(qs, key=lambda q: np.abs(q).max())


def standard(f: np.ndarray) -> np.ndarray:
    return (f - f.mean(0)) / f.std(0)


def test_perfect_code_scores_the_maximum():
    f = grid()
    codes = 2.5 * f + 1.0  # an affine map per dimension keeps the bins apart
    assert mig(codes, f)["mig"] == pytest.approx(1.0)
    for model in ("forest", "gbt"):
        r = dci(f ** 3.0, f, importance=model)  # any monotone map: the trees see the same order
        assert r["dci_disentanglement"] == pytest.approx(1.0, abs=1e-6)
        assert r["dci_completeness"] == pytest.approx(1.0, abs=1e-6)
        assert r["dci_informativeness"] == pytest.approx(1.0)
    assert factorvae_score(lambda x: x ** 3.0, SIZES, votes=(60, 60))["factorvae_score"] == 1.0
    assert betavae_score(lambda x: x.astype(float), SIZES, n_train=150, n_eval=60)["betavae_score"] == 1.0


def test_a_rotated_code_scores_low():
    f = grid()
    rot = standard(f.astype(float)) @ rotation(3)
    assert mig(rot, f)["mig"] < 0.2
    assert dci(rot, f)["dci_disentanglement"] < 0.4
    assert dci(rot, f, importance="gbt")["dci_disentanglement"] < 0.4
    assert sap(rot, f)["sap"] < sap(f.astype(float), f)["sap"]
    # the FactorVAE score only asks that each dimension's least-variance factor be one
    # factor: a rotation lowers it, but a majority vote still maps most dimensions right
    q = rotation(3)
    assert factorvae_score(lambda x: standard(x.astype(float)) @ q, SIZES, votes=(60, 60))["factorvae_score"] < 0.97


def test_permuting_the_dimensions_changes_nothing():
    f = grid()
    codes = f + np.random.default_rng(1).normal(0, 0.4, f.shape)
    perm = [2, 0, 1]
    for metric, key in ((mig, "mig"), (sap, "sap")):
        assert metric(codes[:, perm], f)[key] == metric(codes, f)[key]
    a, b = dci(codes, f, importance="forest"), dci(codes[:, perm], f, importance="forest")
    # the trees visit the dimensions in a random order: equal splits may go either way
    for key in ("dci_disentanglement", "dci_completeness", "dci_informativeness"):
        assert b[key] == pytest.approx(a[key], abs=0.01)
    assert np.allclose(np.array(b["dci_importance"]), np.array(a["dci_importance"])[perm], atol=0.02)
    enc = lambda x, p=slice(None): (x.astype(float) + 0.1 * np.sin(7.0 * x))[:, p]  # noqa: E731
    assert (factorvae_score(lambda x: enc(x, perm), SIZES, votes=(40, 40))["factorvae_score"]
            == factorvae_score(enc, SIZES, votes=(40, 40))["factorvae_score"])


def test_mig_by_hand():
    f = np.array([[0], [0], [0], [0], [1], [1], [1], [1]])
    codes = np.array([[0, 0], [0, 1], [0, 0], [1, 1], [1, 0], [1, 1], [1, 0], [1, 1]], dtype=float)
    # dimension 0 against the factor: joint counts (0,0)=3, (0,1)=1, (1,1)=4; dimension 1 is independent
    mi = 3 / 8 * math.log(2) + 1 / 8 * math.log(2 / 5) + 1 / 2 * math.log(8 / 5)
    r = mig(codes, f, bins=2)
    assert r["mutual_information"][0][0] == pytest.approx(mi)
    assert r["mutual_information"][1][0] == pytest.approx(0.0, abs=1e-12)
    assert r["mig"] == pytest.approx(mi / math.log(2))
    assert r["points"] == 8 and r["bins"] == 2 and r["sklearn_version"]


def test_constant_factors_are_left_out():
    f = grid()
    with_colour = np.c_[np.zeros(len(f), np.int64), f]  # dSprites' single colour
    assert mig(2.0 * f, with_colour)["mig_per_factor"] == mig(2.0 * f, f)["mig_per_factor"]


def test_bad_inputs_are_refused():
    f = grid()
    with pytest.raises(ValueError, match="one row per point"):
        mig(np.zeros((len(f) - 1, 3)), f)
    with pytest.raises(ValueError, match="integer"):
        mig(f.astype(float), f.astype(float))


def test_missing_sklearn_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    with pytest.raises(ConfigError, match=r"vaelab\[scores\]"):
        require_sklearn()


def test_dci_gives_the_same_numbers_on_any_number_of_threads():
    f = grid()
    codes = standard(f.astype(float)) @ rotation(3) + np.random.default_rng(0).normal(0, 0.3, (len(f), 3))
    one, two = dci(codes, f, n_jobs=1), dci(codes, f, n_jobs=2)
    assert one["dci_importance"] == two["dci_importance"] and one["dci_disentanglement"] == two["dci_disentanglement"]


def test_the_factorvae_score_counts_only_the_codes_it_encoded():
    encoded = []

    def collapsed(x):  # every dimension still: nothing to vote with
        encoded.append(len(x))
        return np.zeros((len(x), 2))

    r = factorvae_score(collapsed, SIZES, votes=(10, 10), variance_points=500)
    assert r["factorvae_active_dims"] == 0 and r["points"] == sum(encoded) == 500
