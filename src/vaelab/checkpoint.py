"""Run folders and checkpoints.

A run folder holds ``config.json``, ``metrics.jsonl``, PNG grids and ``checkpoint/``:

- ``checkpoint/model.safetensors``: model weights (plain tensors, no pickle);
- ``checkpoint/state.safetensors``: optimizer moments and RNG states as tensors;
- ``checkpoint/state.json``: epoch, step, optimizer hyperparameters, vaelab version.

A checkpoint is written into a fresh temporary folder which is then swapped in with
renames, so a crash at any instant leaves either the old or the new checkpoint whole.
Loading reads tensors with safetensors and the rest with json: no code is executed.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from vaelab import __version__
from vaelab.config import Config, ConfigError


class RunError(RuntimeError):
    """A run folder is missing or incomplete; the message says what to do."""


def _ckpt_dir(run_dir: Path) -> Path:
    ckpt = run_dir / "checkpoint"
    if (ckpt / "state.json").is_file():
        return ckpt
    old = run_dir / "checkpoint.old"  # a crash between the two renames of a swap
    if (old / "state.json").is_file():
        return old
    raise RunError(f"{run_dir} has no checkpoint (expected {ckpt}/state.json); was training started there?")


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, scalars = {}, {}
    for idx, per_param in state["state"].items():
        for name, value in per_param.items():
            if torch.is_tensor(value):
                tensors[f"optim/{idx}/{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{idx}/{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, idx, name = key.split("/", 2)
            state.setdefault(int(idx), {})[name] = value
    for key, value in meta["scalars"].items():
        idx, name = key.split("/", 1)
        state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(run_dir: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                    info: dict[str, Any], rng: dict[str, torch.Tensor] | None = None) -> None:
    """Atomically write the checkpoint of `model` (+ optimizer, RNG states, `info`)."""
    run_dir = Path(run_dir)
    tmp = Path(tempfile.mkdtemp(dir=run_dir, prefix=".checkpoint-"))
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(weights, tmp / "model.safetensors", metadata={"vaelab": __version__})
    state_tensors: dict[str, torch.Tensor] = {f"rng/{k}": v.cpu().contiguous() for k, v in (rng or {}).items()}
    optim_meta = None
    if optimizer is not None:
        t, optim_meta = _flatten_optimizer(optimizer.state_dict())
        state_tensors.update(t)
    save_file(state_tensors, tmp / "state.safetensors")
    record = {**info, "optimizer": optim_meta, "vaelab_version": __version__}
    (tmp / "state.json").write_text(json.dumps(record, indent=2) + "\n")
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    final, old = run_dir / "checkpoint", run_dir / "checkpoint.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(run_dir: str | Path, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer | None = None) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Load weights into `model` (and state into `optimizer`); return (info, rng states)."""
    ckpt = _ckpt_dir(Path(run_dir))
    device = next(model.parameters()).device
    model.load_state_dict(load_file(ckpt / "model.safetensors", device=str(device)))
    info = json.loads((ckpt / "state.json").read_text())
    tensors = load_file(ckpt / "state.safetensors")
    if optimizer is not None and info.get("optimizer") is not None:
        optimizer.load_state_dict(_unflatten_optimizer(tensors, info["optimizer"]))
    rng = {k[len("rng/"):]: v for k, v in tensors.items() if k.startswith("rng/")}
    return info, rng


def load_config(run_dir: str | Path) -> Config:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"run folder {run_dir} does not exist")
    path = run_dir / "config.json"
    if not path.is_file():
        raise RunError(f"{run_dir} is not a vaelab run folder (no config.json)")
    try:
        return Config.from_dict(json.loads(path.read_text()))
    except (ValueError, ConfigError) as e:
        raise RunError(f"{path}: {e}") from None


def load_run(run_dir: str | Path, device: str | torch.device = "cpu"):
    """(config, model in eval mode with its trained weights) of a run folder."""
    from vaelab.models import build_model

    cfg = load_config(run_dir)
    info = json.loads((_ckpt_dir(Path(run_dir)) / "state.json").read_text())
    model = build_model(cfg.model, tuple(info["image_shape"]), cond_dim=info.get("cond_dim", 0)).to(device)
    load_checkpoint(run_dir, model)
    model.eval()
    return cfg, model

