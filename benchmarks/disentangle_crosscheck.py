"""vaelab's disentanglement metrics against nmichlo/disent's on the same codes.

    pip download disent==0.8.0 --no-deps -d /tmp/disent && python -m zipfile -e /tmp/disent/disent-0.8.0-*.whl /tmp/disent/x
    python benchmarks/disentangle_crosscheck.py --disent /tmp/disent/x [--out benchmarks/results/...json]

disent is not a dependency of vaelab, and its package pulls in a training stack (PyTorch
Lightning, h5py, hydra...). Its metric files need only numpy, scipy, scikit-learn and tqdm, so
this script loads `disent/metrics/{utils,_mig,_dci,_sap,_factor_vae}.py` from the unpacked
wheel with the few disent modules they import (`disent.dataset`, `disent.util`) replaced by
stand-ins, and calls their computing functions directly on the same arrays vaelab gets.

Codes: N random points of a dSprites-like factor grid (sizes 3, 6, 10, 8, 8: fewer
orientation and position values than dSprites so that gradient-boosted DCI, one tree per
class and stage, stays affordable), encoded by deterministic functions of the factors:
``clean`` (each factor in its own dimension, with a small nonlinear wobble, plus two
dimensions of mixtures) and ``mixed`` (a random linear mix of the factors through tanh).
MIG, DCI (gradient-boosted trees, both sides) and SAP see identical arrays and splits; the
FactorVAE score draws its own votes on each side (disent from numpy's global generator),
so it is compared with 10,000 training and 10,000 evaluation votes, whose sampling error
is a few thousandths. disent 0.8.0 has no beta-VAE score.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np

from vaelab.disentangle import _split, dci, factorvae_score, mig, sap

SIZES = (3, 6, 10, 8, 8)


def load_disent(root: Path) -> dict[str, types.ModuleType]:
    """disent's metric modules, loaded from an unpacked wheel with stand-ins for the rest."""
    def package(name: str) -> types.ModuleType:
        m = types.ModuleType(name)
        m.__path__ = []
        sys.modules[name] = m
        return m

    package("disent")
    package("disent.dataset").DisentDataset = object
    util = package("disent.util")
    util.to_numpy = np.asarray
    package("disent.util.function").wrapped_partial = lambda f, *a, **k: f
    metrics = package("disent.metrics")
    out = {}
    for name in ("utils", "_mig", "_dci", "_sap", "_factor_vae"):
        spec = importlib.util.spec_from_file_location(f"disent.metrics.{name}", root / "disent" / "metrics" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
        setattr(metrics, name, mod)
        out[name] = mod
    return out


def encoders(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    scale = 1.0 / (np.asarray(SIZES) - 1)
    mix = rng.normal(size=(len(SIZES), len(SIZES) + 2))
    wobble = rng.normal(size=(len(SIZES), len(SIZES)))

    def clean(f):
        x = f * scale
        own = x + 0.25 * np.sin(3.0 * x @ wobble)
        return np.c_[own, np.tanh(x @ mix[:, :2])]

    def mixed(f):
        return np.tanh((f * scale - 0.5) @ mix)

    return {"clean": clean, "mixed": mixed}


class Grid:
    """What disent's FactorVAE score asks of a dataset, for the factor grid alone: the
    "observations" are the factor codes, and the representation function encodes them."""

    def __init__(self):
        self.gt_data = types.SimpleNamespace(num_factors=len(SIZES), sample_factors=self.sample)

    @staticmethod
    def sample(n):
        return np.stack([np.random.randint(0, s, n) for s in SIZES], axis=1)

    def dataset_batch_from_factors(self, factors, mode):
        return factors

    def dataset_sample_batch(self, n, mode):
        return self.sample(n)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--disent", type=Path, required=True, help="the unpacked disent wheel (holds disent/metrics)")
    p.add_argument("--n", type=int, default=6000, help="points for MIG, DCI and SAP")
    p.add_argument("--votes", type=int, default=10_000, help="FactorVAE votes, each side, training and evaluation")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    d = load_disent(args.disent)
    import sklearn

    rng = np.random.default_rng(0)
    f = np.stack([rng.integers(0, s, args.n) for s in SIZES], axis=1)
    train, test = _split(args.n, 0, 1 / 3)
    rows = {}
    for name, enc in encoders().items():
        z = enc(f)
        ours = {"mig": mig(z, f)["mig"]}
        r = dci(z, f, importance="gbt")
        ours.update({k: r[f"dci_{k}"] for k in ("disentanglement", "completeness", "informativeness")})
        ours["sap"] = sap(z, f)["sap"]
        ours["factorvae"] = factorvae_score(enc, SIZES, votes=(args.votes, args.votes))["factorvae_score"]

        theirs = {"mig": float(d["_mig"]._compute_mig(z.T, f.T)["mig.discrete_score"])}
        r = d["_dci"]._compute_dci(z[train].T, f[train].T, z[test].T, f[test].T)
        theirs.update({"disentanglement": float(r["dci.disentanglement"]), "completeness": float(r["dci.completeness"]),
                       "informativeness": float(r["dci.informativeness_test"])})
        theirs["sap"] = float(d["_sap"]._compute_sap(z[train].T, f[train].T, z[test].T, f[test].T, False)["sap.score"])
        np.random.seed(0)
        fv = d["_factor_vae"].metric_factor_vae(Grid(), enc, batch_size=64, num_train=args.votes, num_eval=args.votes,
                                                num_variance_estimate=10_000)
        theirs["factorvae"] = float(fv["factor_vae.eval_accuracy"])
        rows[name] = {m: {"vaelab": round(ours[m], 4), "disent": round(theirs[m], 4),
                          "abs_diff": round(abs(ours[m] - theirs[m]), 4),
                          "within_0.01": bool(abs(ours[m] - theirs[m]) <= 0.01)} for m in ours}
        print(name, json.dumps(rows[name]), flush=True)
    result = {
        "date": dt.date.today().isoformat(), "disent": "0.8.0 (metric files only)", "sklearn": sklearn.__version__,
        "numpy": np.__version__, "factor_sizes": SIZES, "points": args.n, "split": "2/3 train, 1/3 test, seed 0",
        "factorvae_votes": args.votes, "factorvae_batch": 64, "dci_model": "gradient-boosted trees, both sides",
        "betavae": "not compared: disent 0.8.0 has no beta-VAE score", "results": rows,
        "all_within_0.01": all(v["within_0.01"] for r in rows.values() for v in r.values()),
    }
    print(json.dumps({"all_within_0.01": result["all_within_0.01"]}))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
