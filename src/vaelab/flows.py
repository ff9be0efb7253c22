"""Normalizing flows in the posterior (Rezende & Mohamed 2015).

z_0 ~ q_0(z|x) = N(mu(x), sigma(x)^2) is pushed through K invertible maps; the density
of z_K is log q_K(z_K) = log q_0(z_0) - sum_k log |det df_k/dz_{k-1}| (their eq. 7).
Flow parameters are amortised: the encoder predicts them for each image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vaelab.distributions import DiagonalGaussian

__all__ = ["PlanarFlows", "RadialFlows", "FlowPosterior"]


def _shrink(v: torch.Tensor, max_norm: float) -> torch.Tensor:
    """Factor (..., 1) that maps v to v * max_norm tanh(|v| / max_norm) / |v|: ~1 for short v,
    norm at most max_norm."""
    n = v.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return max_norm * torch.tanh(n / max_norm) / n


class PlanarFlows(nn.Module):
    """A stack of K planar maps that make a Gaussian posterior more flexible (Rezende & Mohamed 2015).

    Each map is f(z) = z + u_hat h(w.z + b), h = tanh (their eq. 10): it bends space along one
    hyperplane. The parameters u, w, b of all K maps come from the encoder, one set per image.

    f is invertible iff w.u_hat >= -1 (their appendix A), and their u_hat = u + (m(w.u) -
    w.u) w / |w|^2 with m(a) = -1 + softplus(a) keeps w.u_hat > -1. But as w.u_hat
    approaches -1 the map flattens the hyperplane w.z + b = 0: det df/dz = 1 + h'(a) w.u_hat
    goes to 0 there, and the gradient of log det at a point a distance ~sqrt(s) from it grows
    like 1/sqrt(s), with s = 1 + w.u_hat, which can blow up amortised parameters (it did in
    training, at the default learning rate). Here m(a) = -1 + `min_det` + softplus(a):
    det >= min_det everywhere, so every step's log det, and its gradient, stay bounded; ten
    maps can still contract a direction by min_det^10.

    The determinant is only half of it. A map's Jacobian I + h'(a) u_hat w^T stretches by up
    to 1 + |u_hat||w|, and K maps compose: with |w| and |u_hat| up to 4, ten maps could stretch
    a direction by 17^10, so that one outlier image can throw a gradient that inflates the
    base log-std until the Monte-Carlo KL overflows. `max_norm` bounds |w| and |u_hat|
    smoothly (v -> v max_norm tanh(|v| / max_norm) / |v|); at 2 each map stretches by at most
    5 (measurements: docs/benchmarks.md, flows).

    Args:
        latent_dim: D, the number of latent dimensions.
        k: K, the number of maps.
        min_det: the lower bound on each map's Jacobian determinant, in (0, 1].
        max_norm: the bound on |w| and |u_hat|.

    Examples:
        >>> from vaelab.flows import PlanarFlows
        >>> _ = torch.manual_seed(0)
        >>> flows = PlanarFlows(latent_dim=2, k=4)
        >>> flows.num_params                                  # K (2 D + 1) numbers per image
        20
        >>> params = torch.randn(3, flows.num_params)          # what an encoder predicts for 3 images
        >>> z, log_det = flows(torch.randn(5, 3, 2), params)   # 5 samples for each image
        >>> z.shape, log_det.shape
        (torch.Size([5, 3, 2]), torch.Size([5, 3]))
        >>> z0 = torch.randn(1, 2)
        >>> jac = torch.autograd.functional.jacobian(lambda v: flows(v, params[:1])[0], z0).reshape(2, 2)
        >>> torch.allclose(flows(z0, params[:1])[1], torch.linalg.slogdet(jac).logabsdet, atol=1e-5)
        True
        >>> bool((log_det >= 4 * torch.log(torch.tensor(0.1)) - 1e-5).all())   # det >= min_det per map
        True
    """

    def __init__(self, latent_dim: int, k: int, min_det: float = 0.1, max_norm: float = 2.0) -> None:
        super().__init__()
        self.latent_dim, self.k, self.min_det, self.max_norm = latent_dim, k, min_det, max_norm
        self.num_params = k * (2 * latent_dim + 1)

    def split(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Cut the flat parameters into the maps' vectors: params (B, num_params) -> u (B, K, D),
        w (B, K, D), b (B, K)."""
        d = self.latent_dim
        p = params.unflatten(-1, (self.k, 2 * d + 1))
        return p[..., :d], p[..., d : 2 * d], p[..., 2 * d]

    def u_hat(self, u: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The invertible direction u_hat and s = 1 + w.u_hat: u, w (B, K, D) -> u_hat (B, K, D), s (B, K).

        u_hat = u + (s' - 1 - w.u) w / |w|^2 with s' = min_det + softplus(w.u), then shrunk to
        |u_hat| <= max_norm, so that s >= min_det (s is returned rather than recomputed from u_hat:
        a float32 dot product rounds).
        """
        wu = (w * u).sum(-1, keepdim=True)
        w2 = w.square().sum(-1, keepdim=True)
        # w ~ 0: the map is a shift whatever u is and the correction along w is undefined, so
        # u stays as it is and s = 1 + w.u (~1), which keeps w.u_hat = s - 1 exact
        s = torch.where(w2 > 1e-12, self.min_det + F.softplus(wu), 1 + wu)
        u_hat = u + (s - 1 - wu) * w / w2.clamp_min(1e-12)
        # |u_hat| <= max_norm, smoothly; shrinking u_hat keeps w.u_hat = c (s - 1) >= min_det - 1
        c = _shrink(u_hat, self.max_norm)
        return u_hat * c, (1 + c * (s - 1)).squeeze(-1)

    def forward(self, z: torch.Tensor, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Push z_0 through the K maps: z_0 (B, D) or (n, B, D), params (B, num_params) ->
        z_K of z_0's shape and sum_k log|det df_k/dz_{k-1}|, shape (B,) or (n, B)."""
        u, w, b = self.split(params)
        w = w * _shrink(w, self.max_norm)
        u, s = self.u_hat(u, w)  # (B, K, D), (B, K) with w.u_hat = s - 1
        log_det = torch.zeros(z.shape[:-1], device=z.device, dtype=z.dtype)
        for i in range(self.k):
            h = torch.tanh((z * w[:, i]).sum(-1) + b[:, i])  # (..., B)
            z = z + h.unsqueeze(-1) * u[:, i]
            # det = 1 + h'(a) w.u_hat = 1 + (1 - h^2)(s - 1) = h^2 + (1 - h^2) s >= min(1, s):
            # a sum of non-negative terms, never below min_det
            hh = h.square()
            log_det = log_det + torch.log(hh + (1 - hh) * s[:, i])
        return z, log_det


class RadialFlows(nn.Module):
    """A stack of K radial maps that make a Gaussian posterior more flexible (Rezende & Mohamed 2015).

    Each map is f(z) = z + beta h(alpha, r) (z - z0), h = 1 / (alpha + r), r = |z - z0|
    (their eq. 14): it pulls points towards, or pushes them away from, a centre z0. The
    parameters of all K maps come from the encoder, one set per image.

    Invertible iff beta >= -alpha. As beta -> -alpha the map collapses the neighbourhood of z0
    (both factors of det, 1 + beta h and 1 + beta alpha / (alpha + r)^2, go to 0 as r -> 0), the
    same singularity as a planar map's (see PlanarFlows); alpha = softplus(a) and
    beta = -(1 - min_det) alpha + softplus(b') keep both factors >= min_det (det >= min_det^d).

    Args:
        latent_dim: D, the number of latent dimensions.
        k: K, the number of maps.
        min_det: the lower bound on each factor of a map's Jacobian determinant, in (0, 1].

    Examples:
        >>> from vaelab.flows import RadialFlows
        >>> _ = torch.manual_seed(0)
        >>> flows = RadialFlows(latent_dim=2, k=4)
        >>> flows.num_params                                  # K (D + 2): z0, alpha and beta per map
        16
        >>> params = torch.randn(3, flows.num_params)
        >>> z, log_det = flows(torch.randn(5, 3, 2), params)
        >>> z.shape, log_det.shape
        (torch.Size([5, 3, 2]), torch.Size([5, 3]))
        >>> z0 = torch.randn(1, 2)
        >>> jac = torch.autograd.functional.jacobian(lambda v: flows(v, params[:1])[0], z0).reshape(2, 2)
        >>> torch.allclose(flows(z0, params[:1])[1], torch.linalg.slogdet(jac).logabsdet, atol=1e-5)
        True
    """

    def __init__(self, latent_dim: int, k: int, min_det: float = 0.1) -> None:
        super().__init__()
        self.latent_dim, self.k, self.min_det = latent_dim, k, min_det
        self.num_params = k * (latent_dim + 2)

    def forward(self, z: torch.Tensor, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Push z_0 through the K maps: z_0 (B, D) or (n, B, D), params (B, num_params) ->
        z_K of z_0's shape and sum_k log|det df_k/dz_{k-1}|, shape (B,) or (n, B).

        params holds, per map, the centre z0 (D numbers), then a and b', with alpha = softplus(a)
        and beta = -(1 - min_det) alpha + softplus(b').
        """
        d = self.latent_dim
        p = params.unflatten(-1, (self.k, d + 2))
        # alpha >= 1e-6: h = 1 / (alpha + r) stays finite at r = 0
        z0, alpha = p[..., :d], F.softplus(p[..., d]) + 1e-6
        beta = -(1 - self.min_det) * alpha + F.softplus(p[..., d + 1])
        log_det = torch.zeros(z.shape[:-1], device=z.device, dtype=z.dtype)
        for i in range(self.k):
            diff = z - z0[:, i]
            r = diff.square().sum(-1).add(1e-20).sqrt()  # |z - z0|, with a finite gradient at z = z0
            h = 1 / (alpha[:, i] + r)
            bh = beta[:, i] * h
            z = z + bh.unsqueeze(-1) * diff
            # det = (1 + beta h)^(d-1) (1 + beta h + beta h'(r) r), h' = -h^2
            log_det = log_det + (d - 1) * torch.log1p(bh) + torch.log1p(bh - beta[:, i] * h.square() * r)
        return z, log_det


FLOWS: dict[str, type[nn.Module]] = {"planar": PlanarFlows, "radial": RadialFlows}


class FlowPosterior:
    """A flow posterior q_K(z|x): a diagonal Gaussian base pushed through amortised flows.

    Samples are z_K = f_K(...f_1(z_0)), z_0 ~ base, and their density is
    log q_K(z_K) = log q_0(z_0) - sum_k log|det df_k/dz_{k-1}| (Rezende & Mohamed 2015, eq. 7).
    It offers the interface of every posterior (`rsample_with_log_prob`, `rsample`, `mean`); its
    KL to the prior has no closed form.

    Args:
        base: the Gaussian q_0(z|x), with parameters (B, D).
        flows: a `PlanarFlows` or `RadialFlows`.
        params: (B, flows.num_params), the flow parameters the encoder predicts for each image.

    Examples:
        >>> from vaelab.distributions import DiagonalGaussian
        >>> from vaelab.flows import FlowPosterior, PlanarFlows
        >>> _ = torch.manual_seed(0)
        >>> flows = PlanarFlows(latent_dim=2, k=4)
        >>> base = DiagonalGaussian(torch.randn(3, 2), torch.zeros(3, 2))
        >>> q = FlowPosterior(base, flows, torch.randn(3, flows.num_params))
        >>> z, log_q = q.rsample_with_log_prob(5, generator=torch.Generator().manual_seed(1))
        >>> z.shape, log_q.shape, q.mean.shape
        (torch.Size([5, 3, 2]), torch.Size([5, 3]), torch.Size([3, 2]))
        >>> z0 = base.rsample(5, generator=torch.Generator().manual_seed(1))      # the same base draws
        >>> zk, log_det = flows(z0, q.params)
        >>> torch.allclose(zk, z), torch.allclose(log_q, base.log_prob(z0) - log_det)
        (True, True)
    """

    def __init__(self, base: DiagonalGaussian, flows: nn.Module, params: torch.Tensor) -> None:
        self.base, self.flows, self.params = base, flows, params

    @property
    def mean(self) -> torch.Tensor:
        """The base mean pushed through the flows: a representative code (B, D)."""
        return self.flows(self.base.mean, self.params)[0]

    def rsample_with_log_prob(self, n: int, generator: torch.Generator | None = None):
        """n reparameterised samples z_K (n, B, D) and log q_K(z_K | x) (n, B)."""
        z0 = self.base.rsample(n, generator=generator)
        z, log_det = self.flows(z0, self.params)
        return z, self.base.log_prob(z0) - log_det

    def rsample(self, n: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Reparameterised samples z_K: (n, B, D), or (B, D) if n is None."""
        z0 = self.base.rsample(n, generator=generator)
        return self.flows(z0, self.params)[0]
