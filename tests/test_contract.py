"""One contract, every registered model: shapes, finite loss, gradients, save/load."""

import pytest
import torch

from vaelab.checkpoint import load_checkpoint, save_checkpoint
from vaelab.config import ConfigError, ModelConfig, TrainConfig
from vaelab.corruption import PixelNoise, add_noise
from vaelab.distributions import LIKELIHOODS, SCALES
from vaelab.flows import FLOWS
from vaelab.ladder import Ladder
from vaelab.models import MODELS, build_model
from vaelab.nets import ResBlock
from vaelab.noise import ExampleNoise
from vaelab.objectives import OBJECTIVES, Step, bind

SHAPE = (1, 28, 28)
RGB = (3, 16, 24)  # colour and non-square: catches height/width and channel mix-ups
# two mixture components: the same code paths as the default 10 at a fifth of the cost
SMALL = dict(latent_dim=3, decoder_hidden=None, mixture=2)
UNSCALED = ("bernoulli", "logistic-mixture")  # families that ignore likelihood_scale

# (config, image shape (C, H, W)) pairs
CASES = [
    (ModelConfig(model=name, hidden=(16, 8), likelihood=lik, likelihood_scale=scale, **SMALL), SHAPE)
    for name in MODELS
    # the censored model is the CVAE's networks plus an adversary on its codes: two likelihoods
    for lik in (LIKELIHOODS if name != "censored" else ("bernoulli", "logistic"))
    # the ladder ignores --net and its cost is in its cells: one scale per likelihood
    for scale in (SCALES if lik not in UNSCALED and name not in ("ladder", "censored") else ("pixel",))
] + [
    # flows shape a posterior: every model that has one (the ICVAE penalty needs a plain
    # Gaussian, so it is excluded) x every flow type x every likelihood
    (ModelConfig(model=name, hidden=(16, 8), likelihood=lik, flows=2, flow_type=flow, **SMALL), SHAPE)
    for name in ("vae", "cvae")
    for flow in FLOWS
    for lik in LIKELIHOODS
]

# conv nets: every model x both shapes x these likelihoods, with the four conv variants
# (net x res_blocks) rotated Latin-square fashion so that each (likelihood, shape) meets
# all four across the models without the full product
CONV_VARIANTS = [(net, res) for net in ("conv", "conv-transpose", "resnet") for res in (0, 1)]
CONV_LIKELIHOODS = ["bernoulli", "gaussian", "logistic", "logistic-mixture"]
CASES += [
    (ModelConfig(model=name, net=CONV_VARIANTS[(i + j + k) % len(CONV_VARIANTS)][0],
                 res_blocks=CONV_VARIANTS[(i + j + k) % len(CONV_VARIANTS)][1], hidden=(8, 16), likelihood=lik,
                 likelihood_scale="decoder" if lik in ("gaussian", "logistic") else "pixel", **SMALL), shape)
    for i, name in enumerate(m for m in MODELS if m != "censored")  # its networks are the CVAE's
    for j, shape in enumerate((RGB, SHAPE))
    for k, lik in enumerate(CONV_LIKELIHOODS)
]


def _grey(model) -> bool:
    return not type(model.likelihood).binary


def _x(model, n=6, seed=0):
    """(n, *model.image_shape) data the model's likelihood is defined on."""
    g = torch.Generator().manual_seed(seed)
    if _grey(model):  # grey levels k/255
        return torch.randint(0, 256, (n, *model.image_shape), generator=g).float() / 255
    return (torch.rand(n, *model.image_shape, generator=g) < 0.3).float()


COND = 10  # conditional models get one-hot conditions of 10 classes


def _id(case) -> str:
    c, shape = case
    return (f"{c.model}-{c.net}" + (f"-res{c.res_blocks}" if c.res_blocks else "")
            + f"-{c.likelihood}-{c.likelihood_scale}" + (f"-{c.flows}{c.flow_type}" if c.flows else "")
            + "-" + "x".join(map(str, shape)))


@pytest.fixture(params=CASES, ids=_id)
def model(request):
    cfg, shape = request.param
    torch.manual_seed(0)
    return build_model(cfg, shape, cond_dim=COND)


def _c(model, n=6):
    """Conditions for conditional models, None for the others."""
    return torch.eye(COND)[torch.arange(n) % COND] if model.conditional else None


def test_encode_decode_sample_shapes(model):
    x, c = _x(model), _c(model)
    q = model.encode(x, c)
    d = model.latent_dim  # 3, or the sum of a hierarchy's layer sizes
    assert q.mean.shape == (6, d) and q.rsample().shape == (6, d)
    assert q.rsample(4).shape == (4, 6, d)
    assert model.prior().sample(5).shape == (5, d)
    dist = model.decode(q.rsample(4), c)
    assert dist.mean.shape == (4, 6, *model.image_shape)
    assert dist.log_prob(x).shape == (4, 6)
    s = model.sample(5, c=_c(model, 5))
    assert s.mean.shape == (5, *model.image_shape) and s.sample().shape == (5, *model.image_shape)
    if not _grey(model):
        assert ((s.mean >= 0) & (s.mean <= 1)).all()


def test_loss_is_finite_and_gradients_reach_every_parameter(model):
    def without_gradient() -> list[str]:
        model.zero_grad()
        options = {k: v for k, v in (("samples", 2), ("beta", 0.5)) if k in OBJECTIVES[model.objective.name].options}
        terms = model.objective.replace(**options)(model, Step(_x(model), _c(model)))
        assert all(v.shape == (6,) and torch.isfinite(v).all() for v in terms.values())
        terms["loss"].mean().backward()
        return [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]

    missing = without_gradient()
    if model.cfg.res_blocks and not isinstance(model, Ladder):  # the ladder's branches start small, not at zero
        # a zero-initialised residual branch passes no gradient to its first conv
        # (branch.1) until one step moves its last conv off zero
        assert all(".branch.1." in name for name in missing), missing
        with torch.no_grad():
            for p in model.parameters():
                if p.grad is not None:
                    p -= 1e-2 * p.grad
        missing = without_gradient()
    assert not missing, f"no gradient reaches {missing}"


def test_residual_blocks_start_as_the_identity(model):
    blocks = [m for m in model.modules() if isinstance(m, ResBlock)]
    if isinstance(model, Ladder):  # its own cells, which start near the identity: tests/test_ladder.py
        assert blocks == []
        return
    assert len(blocks) == 2 * model.cfg.res_blocks * len(model.cfg.hidden)  # encoder + decoder, per level
    for block in blocks:
        x = torch.randn(2, block.branch[1].in_channels, 3, 5)
        torch.testing.assert_close(block(x), x, rtol=0, atol=0)


@pytest.mark.parametrize("hidden, decoder_hidden, shape, size", [
    ((8, 16), None, (3, 16, 26), "16x26"),  # both nets: 26 is not divisible by 4
    ((8,), (16, 8, 4), (1, 28, 28), "28x28"),  # the 3-level decoder needs multiples of 8
])
@pytest.mark.parametrize("net", ["conv", "conv-transpose", "resnet"])
def test_conv_nets_refuse_sizes_not_divisible_by_their_downsampling(net, hidden, decoder_hidden, shape, size):
    cfg = ModelConfig(net=net, hidden=hidden, decoder_hidden=decoder_hidden, latent_dim=3)
    with pytest.raises(ConfigError, match=f"got {size}.*--hidden"):
        build_model(cfg, shape)


# x_in is handled by the objectives, which every model shares: each model with its own
# objective (and IWAE where it has a density), one posterior with flows, one grey-level family
DENOISE_CASES = [(ModelConfig(model=name, hidden=(32,), **SMALL), SHAPE) for name in MODELS] + [
    (ModelConfig(model="vae", hidden=(32,), flows=2, **SMALL), SHAPE),
    (ModelConfig(model="vae", hidden=(32,), likelihood="logistic", **SMALL), SHAPE)]


@pytest.mark.parametrize("case", DENOISE_CASES, ids=_id)
def test_denoising_forward_encodes_x_in_and_scores_the_clean_image(case):
    """forward(x, c, x_in=...) runs the objective with the encoder seeing x_in (denoising
    training): x_in = x is the plain objective exactly, and with a corrupted x_in the
    reconstruction term still scores the clean x."""
    torch.manual_seed(0)
    model = build_model(*case, cond_dim=COND)
    x, c = _x(model), _c(model)

    def noise():
        return ExampleNoise(torch.arange(6), 3)

    objectives = [model.objective.name] + (["iwae"] if model.has_density else [])
    with torch.no_grad():
        for name in objectives:
            model.objective = bind(name, TrainConfig(samples=2))
            plain = model(x, c, generator=noise())
            same = model(x, c, generator=noise(), x_in=x.clone())
            for key in plain:
                torch.testing.assert_close(same[key], plain[key], rtol=0, atol=0)
        x_in = add_noise(x, "salt-pepper", 0.5, PixelNoise(torch.arange(6), 0))
        model.objective = bind(objectives[0], TrainConfig(samples=2))
        terms = model(x, c, generator=noise(), x_in=x_in)
        q = model.encode(x_in, c)
        if model.objective.name == "reconstruction":
            decoded = model.decode(q.mean, c)
        else:
            decoded = model.decode(q.rsample_with_log_prob(2, generator=noise())[0], c)
        clean, corrupted = decoded.log_prob(x), decoded.log_prob(x_in)
        if model.objective.name != "reconstruction":
            clean, corrupted = clean.mean(0), corrupted.mean(0)
        torch.testing.assert_close(terms["recon"], clean)
        assert not torch.allclose(terms["recon"], corrupted)


def test_log_weights_contract(model):
    x, c = _x(model), _c(model)
    if not model.has_density:
        with pytest.raises(TypeError, match="density"):
            model.log_weights(x, 3)
        return
    lw = model.log_weights(x, 7, c=c)
    assert lw.shape == (7, 6) and torch.isfinite(lw).all()
    # the mean log-weight is a Monte-Carlo ELBO: it agrees with the analytic-KL ELBO
    # within the Monte-Carlo error of both estimates. Conv decoders and mixtures cost far
    # more per sample; the tolerance widens as 1/sqrt(n) for them.
    n = 1000 if model.cfg.net == "mlp" and model.cfg.likelihood != "logistic-mixture" else 200
    n = 50 if isinstance(model, Ladder) else n  # conv cells at every level, whatever --net says
    with torch.no_grad():
        lw = model.log_weights(x, n, c=c)
        q = model.encode(x, c)
        z, log_q = q.rsample_with_log_prob(n)
        recon = model.decode(z, c).log_prob(x)  # (n, B)
        if hasattr(q, "kl_standard_normal") and model.prior().closed_form_kl:
            kl = q.kl_standard_normal()
        else:  # flows, hierarchies: Monte-Carlo KL from separate draws
            kl = (log_q - model.prior().log_prob(z)).mean(0)
        elbo = recon.mean(0) - kl
    se = torch.sqrt((lw.var(0) + (recon - log_q).var(0)) / n)
    assert torch.all((lw.mean(0) - elbo).abs() < 5 * se + 1e-3)


def test_save_load_round_trip_gives_identical_outputs(model, tmp_path):
    x, c = _x(model), _c(model)
    model.eval()
    save_checkpoint(tmp_path, model, None, {"epoch": 0, "step": 0, "image_shape": list(model.image_shape),
                                            "cond_dim": model.cond_dim})
    torch.manual_seed(123)
    clone = build_model(model.cfg, model.image_shape, cond_dim=COND)  # different random init
    load_checkpoint(tmp_path, clone)
    clone.eval()
    torch.testing.assert_close(clone.encode(x, c).mean, model.encode(x, c).mean, rtol=0, atol=0)
    z = torch.randn(6, model.latent_dim)
    torch.testing.assert_close(clone.decode(z, c).mean, model.decode(z, c).mean, rtol=0, atol=0)
    torch.testing.assert_close(clone.decode(z, c).log_prob(x), model.decode(z, c).log_prob(x), rtol=0, atol=0)
