"""The GPU-only decisions, exercised on CPU (CI has no GPU): the precision `auto` picks,
the share of GPU memory the data may take, NCCL and one GPU per torchrun process, and
channels-last conv nets computing what contiguous ones compute."""

import pytest
import torch

from vaelab.batches import memory_budget
from vaelab.config import DataConfig, ModelConfig
from vaelab.models import build_model
from vaelab.runtime import Dist, autocast_dtype, distributed

CUDA = torch.device("cuda")


@pytest.mark.parametrize("bf16_ok", [True, False])
def test_auto_precision_is_bf16_on_gpus_that_have_it_and_fp32_on_cpu(monkeypatch, bf16_ok):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_ok)
    assert autocast_dtype("auto", CUDA) == (torch.bfloat16 if bf16_ok else None)
    assert autocast_dtype("auto", torch.device("cpu")) is None
    assert autocast_dtype("fp16", CUDA) == torch.float16 and autocast_dtype("fp32", CUDA) is None


@pytest.mark.parametrize("flags, conv, expected", [
    ("fpu avx512f avx512_bf16", True, torch.bfloat16), ("fpu amx_bf16 amx_tile", True, torch.bfloat16),
    ("fpu avx512f avx2", True, None), ("fpu avx512f avx512_bf16", False, None)])
def test_auto_precision_on_cpus_is_bf16_for_conv_nets_where_the_cpu_has_bf16(monkeypatch, tmp_path, flags, conv,
                                                                           expected):
    from vaelab import runtime

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: a CPU\nflags\t\t: {flags}\n\n")
    real_open = open
    monkeypatch.setattr("builtins.open", lambda f, *a, **k: real_open(cpuinfo if f == "/proc/cpuinfo" else f, *a, **k))
    assert runtime.autocast_dtype("auto", torch.device("cpu"), conv) == expected
    assert runtime.autocast_dtype("fp32", torch.device("cpu"), conv) is None


def test_data_may_take_half_the_free_gpu_memory_unless_a_budget_is_given(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10 << 30, 80 << 30))
    assert memory_budget(DataConfig(), CUDA) == 5 << 30
    assert memory_budget(DataConfig(memory_budget_mb=300), CUDA) == 300 << 20


@pytest.mark.parametrize("device, backend", [("cuda", "nccl"), ("cpu", "gloo")])
def test_torchrun_processes_take_nccl_and_the_gpu_of_their_local_rank(monkeypatch, device, backend):
    joined, chosen = [], []
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda b, **kw: joined.append(b))
    d, dev = distributed(device)
    assert d == Dist(3, 4) and joined == [backend]  # the local rank picks the GPU below
    if device == "cuda":
        assert dev == torch.device("cuda", 1) and chosen == [dev]
    else:
        assert dev == torch.device("cpu") and chosen == []


@pytest.mark.parametrize("net", ["conv", "conv-transpose"])
def test_channels_last_conv_model_computes_what_the_contiguous_one_does(net):
    torch.manual_seed(0)
    cfg = ModelConfig(net=net, hidden=(8, 16), latent_dim=4)
    plain = build_model(cfg, (3, 16, 16))
    fast = build_model(cfg, (3, 16, 16))
    fast.load_state_dict(plain.state_dict())
    fast.set_precision(None, channels_last=True)
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in fast.parameters() if p.dim() == 4)
    x = (torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(1)) < 0.5).float()
    a = plain(x, generator=torch.Generator().manual_seed(2))
    b = fast(x, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(a["loss"], b["loss"], rtol=1e-4, atol=1e-3)
    b["loss"].mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in fast.parameters())
