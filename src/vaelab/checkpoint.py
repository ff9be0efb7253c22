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
import time
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from vaelab import __version__
from vaelab.config import Config, ConfigError
from vaelab.files import FileError, describe, dir_mode, settings_tag, swap_in

__all__ = ["RunError", "load_run", "load_config", "load_checkpoint", "save_checkpoint", "read_metrics", "eval_path",
           "loaded"]


class RunError(RuntimeError):
    """A run folder is missing, incomplete or damaged; the message says what to do.

    Raised by everything that reads a run folder: loading its config, model or checkpoint,
    resuming, evaluating, plotting. Nothing in the folder is changed or deleted.

    Examples:
        >>> from vaelab.checkpoint import RunError, load_run
        >>> try:
        ...     load_run(tmp)
        ... except RunError as e:
        ...     print(e)
        /... is not a vaelab run folder (no config.json)
    """


CHECKPOINT_FILES = ("state.json", "model.safetensors", "state.safetensors")


def _ckpt_dirs(run_dir: Path) -> list[Path]:
    """Checkpoint folders to try, newest first: a crash between the two renames of a swap
    leaves the previous checkpoint as checkpoint.old."""
    return [d for d in (run_dir / "checkpoint", run_dir / "checkpoint.old") if (d / "state.json").is_file()]


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
    """Write a model's weights (and optimiser state) as the checkpoint of a run folder.

    The checkpoint is ``run_dir/checkpoint/``: ``model.safetensors`` (the weights),
    ``state.safetensors`` (optimiser moments and RNG states) and ``state.json`` (`info`,
    the optimiser's hyperparameters and the vaelab version). The files go into a fresh
    temporary folder, are synced, and the folder is swapped in with two renames, so a crash
    at any moment leaves either the old or the new checkpoint whole.

    Args:
        run_dir: the run folder (it must exist).
        model: the model whose ``state_dict`` is saved.
        optimizer: its optimiser, or None to save weights only.
        info: JSON-able facts stored in ``state.json``; a checkpoint that
            [load_checkpoint][vaelab.checkpoint.load_checkpoint] accepts has at least
            ``epoch`` and ``step`` (integers) and ``image_shape`` (``[C, H, W]``).
        rng: random-generator states by name, such as the uint8 tensors of shape (S,) that
            ``torch.Generator.get_state()`` returns; ``load_checkpoint`` gives them back.

    Raises:
        FileError: the checkpoint could not be written (a full disk, a vanished folder);
            the temporary folder is removed and the previous checkpoint stays whole.

    Examples:
        >>> from pathlib import Path
        >>> from vaelab.checkpoint import save_checkpoint
        >>> folder = Path(tmp, "saved")
        >>> folder.mkdir()
        >>> save_checkpoint(folder, run.model, None, {"epoch": 1, "step": 16, "image_shape": [1, 28, 28]},
        ...                 rng={"data": torch.Generator().manual_seed(0).get_state()})
        >>> sorted(f.name for f in (folder / "checkpoint").iterdir())
        ['model.safetensors', 'state.json', 'state.safetensors']
    """
    run_dir = Path(run_dir)
    try:
        tmp = Path(tempfile.mkdtemp(dir=run_dir, prefix=".checkpoint-"))
    except OSError as e:
        raise FileError(describe(e, "cannot write the checkpoint in")) from None
    try:
        os.chmod(tmp, dir_mode())  # mkdtemp makes 0700; a checkpoint is as readable as any output
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
        swap_in(tmp, run_dir / "checkpoint")
    except OSError as e:
        raise FileError(describe(e, "cannot write the checkpoint; the previous one is kept. Writing")) from None
    except SafetensorError as e:  # safetensors reports its own write errors (a full disk among them)
        full = "No space left" in str(e) or "StorageFull" in str(e)
        why = "the disk is full; free space or write elsewhere" if full else str(e).splitlines()[0]
        kept = "the previous one is kept" if _ckpt_dirs(run_dir) else "no epoch of this run is saved yet"
        raise FileError(f"cannot write the checkpoint in {run_dir} ({why}); {kept}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_checkpoint(run_dir: str | Path) -> tuple[Path, dict[str, Any], dict[str, torch.Tensor],
                                                   dict[str, torch.Tensor]]:
    """(folder, info, weights, state tensors) of a run's checkpoint, read whole and
    validated. All three files come from one folder: if training swaps a new checkpoint
    in while they are read, the read starts again. Damage raises RunError naming the file."""
    run_dir = Path(run_dir)
    for attempt in range(20):
        dirs = _ckpt_dirs(run_dir)
        if not dirs:
            raise RunError(f"{run_dir} has no checkpoint (expected {run_dir / 'checkpoint'}/state.json); "
                           "was training started there?")
        ckpt = dirs[0]
        try:
            raw = {name: (ckpt / name).read_bytes() for name in CHECKPOINT_FILES}
        except FileNotFoundError:
            time.sleep(0.05 * (attempt + 1))  # a swap in progress: try again
            continue
        except OSError as e:
            raise RunError(f"cannot read {ckpt}: {e.strerror}") from None
        return (ckpt, *_parse_checkpoint(ckpt, raw))
    raise RunError(f"{run_dir / 'checkpoint'} kept changing while it was read; try again")


def _parse_checkpoint(ckpt: Path, raw: dict[str, bytes]):
    from safetensors import SafetensorError
    from safetensors.torch import load as load_bytes

    fix = "restore it from a backup or start a new run; vaelab does not overwrite it"
    try:
        info = json.loads(raw["state.json"])
    except (UnicodeDecodeError, ValueError) as e:
        raise RunError(f"{ckpt / 'state.json'} is damaged (not valid JSON: {e}); {fix}") from None
    keys = {"epoch": int, "step": int, "image_shape": list}
    if not isinstance(info, dict) or any(not isinstance(info.get(k), t) for k, t in keys.items()):
        raise RunError(f"{ckpt / 'state.json'} is not a vaelab checkpoint record (needs epoch, step, "
                       f"image_shape); {fix}")
    tensors = []
    for name in ("model.safetensors", "state.safetensors"):
        try:
            tensors.append(load_bytes(raw[name]))
        except (SafetensorError, ValueError, RuntimeError) as e:
            what = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise RunError(f"{ckpt / name} is damaged or not a safetensors file ({what}); {fix}") from None
    return info, tensors[0], tensors[1]


def _written_by(info: dict[str, Any]) -> str:
    v = info.get("vaelab_version")
    return f" (written by vaelab {v}, this is {__version__})" if v and v != __version__ else ""


def load_checkpoint(run_dir: str | Path, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer | None = None) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Load a run folder's checkpoint into a model (and its optimiser state into an optimiser).

    Only tensors and JSON are read: no code from the folder is executed. The weights are
    moved to the device of `model`.

    Args:
        run_dir: the run folder.
        model: a model of the same architecture, e.g. built with
            [build_model][vaelab.models.build_model] from the run's config.
        optimizer: an optimiser over `model`'s parameters to restore, or None.

    Returns:
        tuple: ``(info, rng)``, the ``state.json`` record (``epoch``, ``step``, ``image_shape``, ...)
        and the saved random-generator states by name (tensors such as the uint8 states of
        shape (S,) that ``torch.Generator.get_state()`` returns).

    Raises:
        RunError: no checkpoint, a damaged file, or weights that do not fit `model`.

    Examples:
        >>> from vaelab.checkpoint import load_checkpoint, load_run
        >>> cfg, model = load_run(run.path)
        >>> with torch.no_grad():                      # forget the weights...
        ...     for p in model.parameters():
        ...         _ = p.zero_()
        >>> info, rng = load_checkpoint(run.path, model)   # ...and read them back
        >>> info["epoch"], info["image_shape"], all(bool(p.any()) for p in model.parameters())
        (1, [1, 28, 28], True)
    """
    ckpt, info, weights, tensors = read_checkpoint(run_dir)
    device = next(model.parameters()).device
    try:
        model.load_state_dict({k: v.to(device) for k, v in weights.items()})
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise RunError(f"{ckpt / 'model.safetensors'} does not fit the model that config.json describes "
                       f"({first}){_written_by(info)}; it belongs to another run or version") from None
    if optimizer is not None and info.get("optimizer") is not None:
        try:
            optimizer.load_state_dict(_unflatten_optimizer(tensors, info["optimizer"]))
        except (KeyError, ValueError, TypeError, RuntimeError) as e:
            raise RunError(f"{ckpt / 'state.safetensors'}: optimizer state does not fit ({e}){_written_by(info)}; "
                           "it belongs to another run or version") from None
        _match_layouts(optimizer)
    rng = {k[len("rng/"):]: v for k, v in tensors.items() if k.startswith("rng/")}
    return info, rng


def _match_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give each parameter's state tensors (Adam's moments) the parameter's memory layout.
    Loaded state is contiguous; a channels-last conv weight's fused Adam step reads its
    moments as if they had its own layout, so without this a resumed run would diverge
    from an uninterrupted one."""
    for param, state in optimizer.state.items():
        for key, value in state.items():
            if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def load_config(run_dir: str | Path) -> Config:
    """The settings of a run: its ``config.json`` read and checked.

    Args:
        run_dir: the run folder.

    Returns:
        The run's [Config][vaelab.config.Config], with everything chosen from the data filled in.

    Raises:
        RunError: no such folder, no ``config.json``, or one that is damaged or invalid.

    Examples:
        >>> from vaelab.checkpoint import load_config
        >>> cfg = load_config(run.path)
        >>> cfg.data.dataset, cfg.model.latent_dim, cfg.model.hidden, cfg.train.epochs
        ('mnist-sample', 2, (32,), 1)
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"run folder {run_dir} does not exist")
    path = run_dir / "config.json"
    if not path.is_file():
        raise RunError(f"{run_dir} is not a vaelab run folder (no config.json)")
    try:
        raw = json.loads(path.read_text())
    except (UnicodeDecodeError, ValueError) as e:
        raise RunError(f"{path} is damaged (not valid JSON: {e}); restore it, or rewrite it from "
                       "'vaelab train --help' defaults") from None
    except OSError as e:
        raise RunError(f"cannot read {path}: {e.strerror}") from None
    try:
        return Config.from_dict(raw)
    except ConfigError as e:
        version = ""
        prov = run_dir / "run.json"
        try:
            v = json.loads(prov.read_text()).get("vaelab_version")
            version = f" (the run was made by vaelab {v}, this is {__version__})" if v and v != __version__ else ""
        except (OSError, ValueError, AttributeError):
            pass
        raise RunError(f"{path} is not a valid config: {e}{version}") from None


def load_run(run_dir: str | Path, device: str | torch.device = "cpu"):
    """A run folder's config and its trained model, ready to use.

    The model is built from ``config.json``, given the checkpoint's weights (without
    executing code from the folder), set to eval mode and bound to the objective it was
    trained with, so ``model(x)`` returns the per-image training terms.

    Args:
        run_dir: the run folder.
        device: where the model goes (``"cpu"``, ``"cuda"``, ...).

    Returns:
        tuple: ``(config, model)``, the run's [Config][vaelab.config.Config] and the model, whose
        ``encode(x)`` takes images of shape (N, C, H, W) and ``sample(n)`` draws from the prior.

    Raises:
        RunError: the folder holds no readable run, or its weights do not fit its config.

    Examples:
        >>> from vaelab.checkpoint import load_run
        >>> cfg, model = load_run(run.path)
        >>> cfg.model.model, model.training, model.latent_dim
        ('vae', False, 2)
        >>> with torch.no_grad():
        ...     model.sample(3, generator=torch.Generator().manual_seed(0)).mean.shape
        torch.Size([3, 1, 28, 28])
    """
    from vaelab.models import bind_objective, build_model

    cfg = load_config(run_dir)
    _, info, _, _ = read_checkpoint(run_dir)
    try:
        model = build_model(cfg.model, tuple(info["image_shape"]), cond_dim=info.get("cond_dim", 0)).to(device)
    except (ConfigError, ValueError, TypeError) as e:
        raise RunError(f"{Path(run_dir) / 'config.json'}: cannot build its model ({e})") from None
    bind_objective(model, cfg.train)  # model(x) runs the objective the run trained on
    load_checkpoint(run_dir, model)
    model.eval()
    return cfg, model


EVAL_METRICS = ("nll", "fd", "fid")  # the order of the metrics in an evaluation's file name


def _metric_order(metrics) -> tuple[str, ...] | None:
    """Metrics in one order; None for the default (nll alone)."""
    if not metrics:
        return None
    got = tuple(m for m in EVAL_METRICS if m in metrics) + tuple(m for m in metrics if m not in EVAL_METRICS)
    return None if got == ("nll",) else got


def eval_path(folder: str | Path, k: int | None = None, n: int | None = None, metrics=None) -> Path:
    """Where `vaelab evaluate` keeps an evaluation in run folder `folder`: ``eval.json`` for the
    default settings; the settings that differ in the name otherwise, so that an evaluation
    never replaces one made with other settings.

    Args:
        folder: the run folder.
        k: importance samples, None when the default for the data was used.
        n: test images, None when all were used.
        metrics: the metrics measured; None (or ``("nll",)``) for the default.

    Returns:
        The path, e.g. ``RUN/eval.json``, ``RUN/eval-k10.json``, ``RUN/eval-n500-nll+fd.json``.

    Examples:
        >>> from vaelab.checkpoint import eval_path
        >>> eval_path("runs/a").name, eval_path("runs/a", k=10).name, eval_path("runs/a", n=500, metrics=["fd", "nll"]).name
        ('eval.json', 'eval-k10.json', 'eval-n500-nll+fd.json')
    """
    tag = settings_tag({"k": k, "n": n, "metrics": _metric_order(metrics)}, {})
    return Path(folder) / f"eval{tag}.json"


def _read_eval(path: Path) -> dict[str, Any]:
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return result if isinstance(result, dict) else {}


def read_metrics(run_dir: str | Path, upto: int | None = None) -> list[dict[str, Any]]:
    """The per-epoch records of a run's ``metrics.jsonl``, in order.

    One rule for damage: a line that is not a JSON object with an integer ``epoch`` (a torn
    line left by a killed process of an older version) is skipped; a file with lines but no
    good record is named as damaged. [vaelab.Run][vaelab.api.Run]'s ``metrics`` and
    ``records()`` read it; training and compare read it here.

    Args:
        run_dir: the run folder.
        upto: only the records of epochs 1..upto (leaving out a line written for a later
            epoch by a run killed before its checkpoint landed); None: all.

    Returns:
        Dicts with ``epoch``, ``step``, ``lr``, the training and test terms (``train_loss``,
        ``test_elbo``, ...), ``seconds``; [] when there is no file yet.

    Raises:
        RunError: the file cannot be read, or holds lines but no epoch record.

    Examples:
        >>> from vaelab.checkpoint import read_metrics
        >>> records = read_metrics(run.path)
        >>> len(records), records[0]["epoch"], "test_elbo" in records[0]
        (1, 1, True)
    """
    path = Path(run_dir) / "metrics.jsonl"
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return []
    except OSError as e:
        raise RunError(describe(e, "cannot read")) from None
    records = []
    for line in lines:
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if isinstance(r, dict) and type(r.get("epoch")) is int and (upto is None or r["epoch"] <= upto):
            records.append(r)
    if not records and any(line.strip() for line in lines) and upto is None:
        raise RunError(f"{path} is damaged (no line is an epoch record); resuming the run rewrites it "
                       "from its checkpoint")
    return records


def read_eval(run_dir: str | Path, k: int | None = None, n: int | None = None, metrics=None) -> dict[str, Any]:
    """The results ``vaelab evaluate`` wrote in a run folder with these settings, or {} when
    there are none (or the file is damaged: it is a result that evaluating again writes anew).
    With no settings, ``eval.json``: the default settings.

    Each evaluation is kept in a file named by the settings that differ from the defaults
    (see [eval_path][vaelab.checkpoint.eval_path]); `k`, `n` and `metrics` name the one to
    read, as they were given to ``vaelab evaluate`` (a `k` or `n` that equals the default
    finds the default file too).
    """
    metrics = _metric_order(metrics)
    tried = dict.fromkeys([(k, n), (None, n), (k, None), (None, None)])
    for kk, nn in tried:
        result = _read_eval(eval_path(run_dir, kk, nn, metrics))
        whole = nn is None and isinstance(result.get("n"), int) and n is not None and result["n"] <= n
        if result and (k is None or result.get("k") == k) and (n is None or result.get("n") == n or whole):
            return result
    return {}


def checkpoint_epoch(run_dir: str | Path) -> int | None:
    """The epoch of a run folder's last completed checkpoint, or None before the first."""
    for ckpt in _ckpt_dirs(Path(run_dir)):
        try:
            epoch = json.loads((ckpt / "state.json").read_text()).get("epoch")
        except (OSError, ValueError, AttributeError):
            continue
        if type(epoch) is int:
            return epoch
    return None


def _same_device(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def loaded(run, device: str | torch.device = "cpu"):
    """``(config, model)`` of a run given in any of the forms the verbs take.

    A folder is read with [load_run][vaelab.checkpoint.load_run] onto `device`; a
    ``(config, model)`` pair is used as it is; a loaded [vaelab.Run][vaelab.api.Run] gives
    the model it holds (on its device, at its precision; read once), unless `device` is
    another device, where the folder is read afresh.

    Examples:
        >>> from vaelab.checkpoint import loaded
        >>> loaded(run)[1] is run.model                # the model the run holds, not a copy
        True
        >>> loaded(run.path)[1] is run.model
        False
    """
    if isinstance(run, tuple):
        return run
    if isinstance(run, (str, os.PathLike)):
        return load_run(run, device)
    model = run.model
    if _same_device(next(model.parameters()).device, torch.device(device)):
        return run.config, model
    return load_run(run.path, device)


def run_device(run, device: str | None = None) -> str:
    """The device a verb runs on: `device` when one is asked for; else a loaded
    vaelab.Run's own (so that ``vaelab.score(run)`` runs where ``run.score()`` does); else
    the CPU."""
    return device if device is not None else str(getattr(run, "device", "cpu"))
