"""Run under torchrun by tests/test_distributed.py: one DDP step on slices of a global batch.

Writes, from rank 0, whether every rank ended with the same gradients and whether they
equal the gradient of the whole batch in one process (the DDP forward trap: work done
outside the wrapped module's forward would not be synchronised)."""

import json
import os
import sys

import torch
import torch.distributed as dist

from vaelab.config import ModelConfig
from vaelab.distributions import ExampleNoise
from vaelab.models import build_model
from vaelab.runtime import distributed, leave_process_group


def grads(model) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def main(out: str) -> None:
    d, device = distributed("cpu")
    torch.manual_seed(0)
    model = build_model(ModelConfig(hidden=(16,), decoder_hidden=None, latent_dim=3), (1, 6, 6))
    x = (torch.rand(10, 1, 6, 6, generator=torch.Generator().manual_seed(1)) < 0.4).float()
    idx = torch.arange(10)
    a, b = d.shard(10)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    terms = ddp(x[a:b], generator=ExampleNoise(idx[a:b], 7))
    (terms["loss"].sum() * d.world / 10).backward()
    mine = grads(model)
    everyone = [torch.empty_like(mine) for _ in range(d.world)]
    dist.all_gather(everyone, mine)
    if d.main:
        reference = build_model(ModelConfig(hidden=(16,), decoder_hidden=None, latent_dim=3), (1, 6, 6))
        reference.load_state_dict(model.state_dict())
        reference.zero_grad()
        reference(x, generator=ExampleNoise(idx, 7))["loss"].mean().backward()
        with open(out, "w") as f:  # closed here: os._exit below flushes nothing
            json.dump({"same_on_all_ranks": all(torch.equal(g, everyone[0]) for g in everyone),
                       "max_diff_vs_one_process": float((everyone[0] - grads(reference)).abs().max()),
                       "grad_norm": float(grads(reference).norm())}, f)
    d.barrier()
    # As the command line does (runtime.leave_process_group): skip interpreter teardown,
    # where a gloo thread can abort the finished process and fail the torchrun job.
    leave_process_group()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1])
