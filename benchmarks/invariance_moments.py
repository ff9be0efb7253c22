"""What a probe reads in a run's codes once each class's mean and covariance are removed.

    python benchmarks/invariance_moments.py RUN [--probe-epochs 10]

Trains the invariance benchmark's probes (0 and 2 hidden layers of 256, as `vaelab probe`) on
the training set's posterior means as they are, and after each class's codes are centred,
standardised per dimension, or whitened (ZCA with that class's covariance, estimated on the
training codes): a per-class affine map that the decoder, which gets c, could undo. If the
whitened codes still let a 2-hidden-layer probe read the class, the class is in the codes'
shape, beyond what moment matching or a conditional affine normalisation can remove.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json

import torch
from torch import nn

from vaelab.batches import memory_budget, model_inputs
from vaelab.checkpoint import load_run
from vaelab.evaluate import posterior_means
from vaelab.nets import mlp
from vaelab.sources import load_configured


def accuracy(feats: dict[str, torch.Tensor], y: dict[str, torch.Tensor], layers: int, epochs: int) -> float:
    """Test accuracy of a probe trained as `vaelab probe` trains it (standardised inputs, Adam 1e-3, batches of 256)."""
    mean, std = feats["train"].mean(0), feats["train"].std(0).clamp_min(1e-6)
    f = {k: (v - mean) / std for k, v in feats.items()}
    torch.manual_seed(0)
    clf = mlp([f["train"].shape[1], *([256] * layers), int(y["train"].max()) + 1], "relu")
    opt = torch.optim.Adam(clf.parameters(), lr=1e-3)
    for _ in range(epochs):
        for idx in torch.randperm(len(y["train"])).split(256):
            loss = nn.functional.cross_entropy(clf(f["train"][idx]), y["train"][idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return float((clf(f["test"]).argmax(1) == y["test"]).float().mean())


def per_class(z: dict[str, torch.Tensor], y: dict[str, torch.Tensor], how: str) -> dict[str, torch.Tensor]:
    """Each class's codes mapped by that class's training statistics: centred, standardised or whitened."""
    out = {k: torch.empty_like(v) for k, v in z.items()}
    for c in y["train"].unique():
        train = z["train"][y["train"] == c]
        mean = train.mean(0)
        if how == "whitened":
            cov = torch.cov((train - mean).T) + 1e-5 * torch.eye(train.shape[1])
            e, u = torch.linalg.eigh(cov)
            scale = u @ torch.diag(e.rsqrt()) @ u.T
        for k in z:
            rows = y[k] == c
            centred = z[k][rows] - mean
            out[k][rows] = {"centred": centred, "standardised": centred / train.std(0),
                            "whitened": centred @ scale if how == "whitened" else None}[how]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--probe-epochs", type=int, default=10)
    args = ap.parse_args()
    cfg, model = load_run(args.run, "cpu")
    data = load_configured(cfg.data)
    cpu = torch.device("cpu")
    inputs = {k: model_inputs(model, cfg, getattr(data, k), len(data.classes), cpu, memory_budget(cfg.data, cpu))
              for k in ("train", "test")}
    z = {k: posterior_means(model, v) for k, v in inputs.items()}
    y = {k: v.labels for k, v in inputs.items()}
    result = {"run": args.run, "probe_epochs": args.probe_epochs,
              "raw_linear": accuracy(z, y, 0, args.probe_epochs), "raw_2": accuracy(z, y, 2, args.probe_epochs)}
    for how in ("centred", "standardised", "whitened"):
        result[f"{how}_2"] = accuracy(per_class(z, y, how), y, 2, args.probe_epochs)
    result["whitened_linear"] = accuracy(per_class(z, y, "whitened"), y, 0, args.probe_epochs)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
