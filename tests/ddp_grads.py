"""Run under torchrun by tests/test_distributed.py: one DDP step on slices of a global batch.

Writes, from rank 0, whether every rank ended with the same gradients and whether they
equal the gradient of the whole batch in one process (the DDP forward trap: work done
outside the wrapped module's forward would not be synchronised), for a VAE and for the
icvae, whose batch-level penalty needs the other processes' rows and their gradients, and for
a VAE trained with tcvae (q(z) over the global batch) and factorvae (its discriminator, trained
beside the model on codes shuffled across the global batch)."""

import json
import os
import sys

import torch
import torch.distributed as dist

from vaelab.config import ModelConfig, TrainConfig
from vaelab.models import bind_objective, build_model
from vaelab.noise import ExampleNoise
from vaelab.runtime import distributed, leave_process_group


def grads(model) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters()])


# the disentangling objectives, on a VAE
OBJECTIVE_KINDS = {"tcvae": TrainConfig(objective="tcvae", beta=4.0, dataset_size=100),
                   "factorvae": TrainConfig(objective="factorvae", discriminator_hidden=(8,))}
# icvae's batch-level terms beyond the pairwise penalty: the sampled estimate and the dependence term
OPTIONS = {"icvae": {"lam": 2.0}, "icvae-sampled": {"lam": 2.0, "marginal": "sampled"},
           "icvae-hsic": {"lam": 2.0, "hsic": 5.0}, "censored": {"lam": 3.0}}


def step(d, kind: str) -> dict:
    """One DDP step of `kind` (vae; icvae, whose penalties span the global batch; censored)."""
    torch.manual_seed(0)
    model_name = "vae" if kind in OBJECTIVE_KINDS else kind.split("-")[0]
    cfg = ModelConfig(model=model_name, hidden=(16,), decoder_hidden=None, latent_dim=3)
    cond_dim = 0 if model_name == "vae" else 4
    model = build_model(cfg, (1, 6, 6), cond_dim=cond_dim)
    if kind in OPTIONS:
        model.objective = model.objective.replace(**OPTIONS[kind])
    if kind in OBJECTIVE_KINDS:
        bind_objective(model, OBJECTIVE_KINDS[kind])
    x = (torch.rand(10, 1, 6, 6, generator=torch.Generator().manual_seed(1)) < 0.4).float()
    c = torch.eye(4)[torch.arange(10) % 4] if cond_dim else None
    idx = torch.arange(10)
    a, b = d.shard(10)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    terms = ddp(x[a:b], None if c is None else c[a:b], generator=ExampleNoise(idx[a:b], 7), peers=d.batch_peers(10))
    (terms["loss"].sum() * d.world / 10).backward()
    mine = grads(model)
    everyone = [torch.empty_like(mine) for _ in range(d.world)]
    dist.all_gather(everyone, mine)
    if not d.main:
        return {}
    reference = build_model(cfg, (1, 6, 6), cond_dim=cond_dim)
    if kind in OBJECTIVE_KINDS:
        bind_objective(reference, OBJECTIVE_KINDS[kind])
    reference.load_state_dict(model.state_dict())
    reference.zero_grad()
    reference.objective = model.objective
    reference(x, c, generator=ExampleNoise(idx, 7))["loss"].mean().backward()
    return {"same_on_all_ranks": all(torch.equal(g, everyone[0]) for g in everyone),
            "max_diff_vs_one_process": float((everyone[0] - grads(reference)).abs().max()),
            "grad_norm": float(grads(reference).norm())}


def main(out: str) -> None:
    d, _ = distributed("cpu")
    results = {kind: step(d, kind) for kind in ("vae", *OPTIONS, *OBJECTIVE_KINDS)}
    if d.main:
        with open(out, "w") as f:  # closed here: os._exit below flushes nothing
            json.dump(results, f)
    d.barrier()
    # As the command line does (runtime.leave_process_group): skip interpreter teardown,
    # where a gloo thread can abort the finished process and fail the torchrun job.
    leave_process_group()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1])
