"""vaelab: train, evaluate and explore variational autoencoders.

The functions for using a trained model are at the top level, loaded on first use (so that
importing vaelab, and ``vaelab --help``, stay free of torch):

- ``vaelab.train(dataset=..., latent_dim=..., epochs=...)``: train a run -> a ``vaelab.Run``
- ``vaelab.load(path, device=...)``: a run folder -> a ``vaelab.Run`` (model, metrics, and the verbs
  evaluate, score, ood, encode, plot, sample, resume, run on its device)
- ``vaelab.score(run, data)``: per-image scores -> a table (``.to_pandas()``)
- ``vaelab.encode(run, data)``: posterior means and standard deviations -> a table
- ``vaelab.ood(run, outside=[...])``: out-of-distribution detection metrics -> a dict
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {"train": "vaelab.api", "load": "vaelab.api", "Run": "vaelab.api",
         "score": "vaelab.scores", "encode": "vaelab.codes", "ood": "vaelab.detection"}
__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vaelab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
