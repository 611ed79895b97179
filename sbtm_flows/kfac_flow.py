r"""A Kronecker-factored Gauss–Newton (K-FAC) flow of Θ: dΘ/dt = −η·M·∇_Θ L, M refreshed piecewise.

The implicit loss L = mean(|s_Θ|² + 2∇·s_Θ) is quadratic in s (the divergence term is linear), so
its Gauss–Newton matrix is G = (2/n) Σᵢ JᵢᵀJᵢ, Jᵢ = ∂s_Θ(Xᵢ)/∂Θ ``(d, P)``.  For one
``nn.Linear`` layer l, z = W̃ã with W̃ = [W | b] ``(out, in+1)`` and ã = (a, 1) its input with a
bias column, the chain rule gives

    ∂s_k(Xᵢ)/∂W̃ = b_{ik} ã_iᵀ,      b_{ik} = ∂s_k(Xᵢ)/∂z_l(Xᵢ) ``(out,)``,   k = 1 … d,

so with W̃ flattened row by row (W's entries row-major, then b — the order of Θ, up to the
permutation between W and b) the exact diagonal block of G is a mean of Kronecker products,

    G_l = (2/n) Σᵢ (Σ_k b_{ik} b_{ik}ᵀ) ⊗ ã_i ã_iᵀ.

K-FAC (Martens & Grosse 2015) replaces the mean of the products by the product of the means,

    G_l ≈ B_l ⊗ A_l,      A_l = (1/n) Σᵢ ã_i ã_iᵀ ``(in+1, in+1)``,   B_l = (2/n) Σᵢ Σ_k b_{ik} b_{ik}ᵀ ``(out, out)``,

which equals G_l in expectation when the inputs ã and the back-propagated b are independent over
the particles; the factor 2 and the normalisations 1/n, 1/n are the ones for which B ⊗ A has the
mean of G_l's terms.  It is exact when every particle shows the layer the same ã (one particle, or
a layer whose input does not vary over the particles) or the same Σ_k b bᵀ: the output layer of an
MLP, where b_{ik} = e_k/c (c = c(t) of a :class:`~sbtm_flows.score.ScaledScore`, 1 otherwise) and
B = (2/c²)·I.  B_l is always exactly G's
bias–bias block (ã's last entry is 1).  The wrappers need no special case: a ``ScaledScore``
(ŝ(x/c(t))/c(t)) and a ``ResidualScore`` (∇log π_t + r_Θ) are differentiated through by autograd,
so ã and b are those of the inner network as seen from s at time t.  The factors come from one
forward pass with hooks on the layers and d backward passes of s_k's sum (each row of s depends
on its own particle only).

Damping (Martens–Grosse factored Tikhonov): G_l + γI is replaced by (B_l + √γ/π_l·I) ⊗ (A_l + π_l√γ·I)
= B⊗A + γI + π√γ·B⊗I + √γ/π·I⊗A, whose inverse is

    M_l = (B_l + √γ/π_l·I)^{−1} ⊗ (A_l + π_l√γ·I)^{−1},   π_l² = (tr A_l/(in+1)) / (tr B_l/out),

γ = δ·mean diag(B⊗A) = δ·Σ_l tr A_l·tr B_l / P (``delta`` relative to the mean Gauss–Newton
diagonal, as in :class:`~sbtm_flows.diag_flow.DiagGNFlow`); π_l makes the two cross terms
π√γ·B⊗I and √γ/π·I⊗A equal in trace.  With the damped factors' eigendecompositions B̂ = U_B diag(β) U_Bᵀ,
Â = U_A diag(α) U_Aᵀ,

    M_l^p g_l = U_B diag(β^{−p}) U_Bᵀ [g_W | g_b] U_A diag(α^{−p}) U_Aᵀ     (row-major vec),

the rate dΘ/dt = −η M^p g using p = ``power`` (1, the K-FAC natural gradient, by default) and the
stiffness estimate the symmetric square root M^{p/2}: the Θ block's Jacobian −η·M^p·∇²_Θ L is
similar to −η·M^{p/2}∇²_Θ L M^{p/2}, the matrix that ``rkc``'s Lanczos
monitor and :class:`~sbtm_flows.tracking_eta.TrackingEta` see through :meth:`KFACFlow.preconditioner`.

The auxiliary ODE state is, per layer, (U_A, log α, U_B, log β) with dA/dt = 0 (orthogonal
matrices and logarithms: O(1) entries that finite differences and solver tolerances resolve),
refreshed every ``every`` integration steps and at output times like DiagGNFlow, so any
torchdiffeq method integrates the flow and a resumed run recomputes the same factors from the same
(X, Θ).  M is symmetric positive definite, so this is a gradient flow of L in the metric M^{−1}
(dL/dt = −η gᵀMg ≤ 0 at fixed particles) with the fixed points of ``"gd"``.  A refresh costs one
forward and d backward passes over the particles plus eigendecompositions of (in+1)- and
out-sized matrices, against DiagGNFlow's per-particle Jacobians.

Measured (README "η and stiffness", §5.4, ``eta="track"``, refreshed every step): the mode weights
follow annealed ULA's from the collapse on (TV 0.02–0.04 at n = 1000 for t ≤ 4, where DiagGNFlow
lags at 0.09–0.17); the full run (n = 4000, T = 20) ends at TV 0.027 to ULA's weights, min mode
3.35 %, 17 316 NFE.  On a coarse grid (dt = 0.05, the experiment's quick schedule) ratio 50 diverged
in the first steps (λ_max tripled within one step); ratio 10 ran, and on the full run gave TV 0.021.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from .diag_flow import check_preconditioner_options

__all__ = ["KFACFlow", "linear_layers", "layer_signals", "kronecker_factors"]


def linear_layers(model: torch.nn.Module) -> list[torch.nn.Linear]:
    """The ``nn.Linear`` layers of ``model`` in order, checked to hold all of its parameters as
    (weight, bias) pairs in the order of ``model.parameters()`` (the layout of Θ).

    Raises:
        ValueError: a parameter outside an ``nn.Linear`` layer, a layer without bias, or another order."""
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    expected = [p for m in layers for p in (m.weight, m.bias)]
    params = list(model.parameters())
    if any(m.bias is None for m in layers) or len(params) != len(expected) or any(p is not q for p, q in zip(params, expected)):
        raise ValueError("KFACFlow needs a network whose parameters are the weights and biases of its nn.Linear layers "
                         f"(e.g. a ScoreMLP, or one wrapped in ScaledScore / ResidualScore); {type(model).__name__} has "
                         "other parameters or a Linear layer without bias: use theta_flow='diag' for it")
    return layers


def layer_signals(flow, x: Tensor, theta: Tensor, t: float | Tensor | None = None) -> list[tuple[Tensor, Tensor]]:
    r"""Per layer l: ``(ã (n, in+1), b (d, n, out))``, the layer's input with a bias column and
    b[k, i] = ∂s_k(xᵢ)/∂z_l(xᵢ), at particles ``x (n, d)`` and flat Θ ``(P,)`` of ``flow`` (an
    :class:`~sbtm_flows.dynamics.SBTMFlow`; one forward pass with hooks, d backward passes)."""
    layers = linear_layers(flow.model)
    seen: dict[int, tuple[Tensor, Tensor]] = {}

    def hook(module, inputs, output):
        if id(module) in seen:
            raise ValueError("KFACFlow: an nn.Linear layer is called twice in one forward pass (shared weights)")
        seen[id(module)] = (inputs[0], output)

    handles = [m.register_forward_hook(hook) for m in layers]
    try:
        with torch.enable_grad():
            s = flow.score_fn(theta.detach().requires_grad_(True), t)(x.detach())
    finally:
        for h in handles:
            h.remove()
    zs = [seen[id(m)][1] for m in layers]
    d = s.shape[1]
    grads = [torch.autograd.grad(s[:, k].sum(), zs, retain_graph=k < d - 1, allow_unused=True) for k in range(d)]
    out = []
    for j, m in enumerate(layers):
        a = seen[id(m)][0].detach()
        a = torch.cat([a, a.new_ones(a.shape[0], 1)], dim=1)
        b = torch.stack([torch.zeros_like(zs[j]) if g[j] is None else g[j] for g in grads]).detach()
        out.append((a, b))
    return out


def kronecker_factors(flow, x: Tensor, theta: Tensor, t: float | Tensor | None = None,
                      chunk: int = 4096) -> list[tuple[Tensor, Tensor]]:
    r"""Per layer: ``(A_l (in+1, in+1), B_l (out, out))`` = ((1/n)Σᵢ ãᵢãᵢᵀ, (2/n)Σᵢ Σ_k b_{ik}b_{ik}ᵀ)
    (module docstring) at particles ``x (n, d)``, ``chunk`` particles at a time, in float64
    (summed over the ranks under the flow's ``comm``).

    Raises:
        ValueError: ``x`` not 2-D or empty, ``chunk`` < 1, or a network K-FAC cannot factor."""
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"kronecker_factors: x must be (n, d) with n >= 1, got shape {tuple(x.shape)}")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"kronecker_factors: chunk must be an integer >= 1, got {chunk!r}")
    sums: list[list[Tensor]] | None = None
    for xb in x.detach().split(chunk):
        part = [[a.double().T @ a.double(), torch.einsum("kio,kip->op", b.double(), b.double())]
                for a, b in layer_signals(flow, xb, theta, t)]
        sums = part if sums is None else [[u + v for u, v in zip(s, p)] for s, p in zip(sums, part)]
    n, comm = x.shape[0], getattr(flow, "comm", None)
    if comm is not None:  # under torch.distributed: every rank's rows
        sums, n = _split_pairs(sums, comm.sum(torch.cat([m.reshape(-1) for pair in sums for m in pair]))), comm.count(n)
    return [(a / n, 2.0 * b / n) for a, b in sums]


def _split_pairs(sums: list[list[Tensor]], flat: Tensor) -> list[list[Tensor]]:
    """``sums``' shapes filled from the flat vector ``flat`` (their concatenation, reduced)."""
    sizes = [m.numel() for pair in sums for m in pair]
    parts = iter(flat.split(sizes))
    return [[next(parts).view_as(m) for m in pair] for pair in sums]


class KFACFlow:
    r"""dΘ/dt = −η·M·∇_Θ L with M the damped per-layer Kronecker-factored inverse of the
    Gauss–Newton matrix, held constant between refreshes (module docstring); the state's
    auxiliary block is each layer's (U_A, log α, U_B, log β).

    Args:
        delta: δ > 0, the damping γ relative to the mean Gauss–Newton diagonal (bounds M's
            eigenvalues by ≈ 1/γ).
        power: p ∈ (0, 1]: the flow uses M^p (1: the K-FAC natural gradient; ½ the square
            root, as DiagGNFlow's ``power``).
        every: integration steps between refreshes of M (a fixed-grid solver; an adaptive one
            refreshes at output times).  Default 1: a refresh costs about one right-hand side, and
            on §5.4's path (n = 1000) every 10 steps let M go stale in the early collapse (the
            flow diverged at t = 0.009) where every step ran through.
        chunk: particles per forward/backward block when estimating the factors.
    """

    name = "kfac"

    def __init__(self, delta: float = 1e-3, every: int = 1, chunk: int = 4096, power: float = 1.0):
        check_preconditioner_options("KFACFlow", delta, power, every=every, chunk=chunk)
        self.delta, self.every, self.chunk, self.power = float(delta), every, chunk, float(power)
        self.shapes: list[tuple[int, int]] = []  # (out, in) per layer, set by aux_size

    @property
    def refresh_every(self) -> int:
        """Integration steps between refreshes of M."""
        return self.every

    def aux_size(self, sizes: list[int]) -> int:
        """Length of the auxiliary state for parameter tensors of ``sizes`` (numels), read as
        (weight out·in, bias out) pairs: Σ_l (in+1)² + (in+1) + out² + out.

        Raises:
            ValueError: sizes that are not (weight, bias) pairs of linear layers."""
        if len(sizes) % 2 or any(b < 1 or w % b for w, b in zip(sizes[::2], sizes[1::2])):
            raise ValueError(f"KFACFlow needs a network of nn.Linear layers with biases (parameter sizes in (weight, bias) "
                             f"pairs), got parameter sizes {list(sizes)}: use theta_flow='diag' for another network")
        self.shapes = [(b, w // b) for w, b in zip(sizes[::2], sizes[1::2])]
        return sum((i + 1) ** 2 + (i + 1) + o * o + o for o, i in self.shapes)

    def start(self, grad: Tensor) -> Tensor:
        """Not used: M needs the particles (:meth:`estimate`); raises."""
        raise RuntimeError("KFACFlow's auxiliary state comes from estimate(flow, x, theta, t), not from the gradient")

    def estimate(self, flow, x: Tensor, theta: Tensor, t: float | Tensor | None = None) -> Tensor:
        r"""The auxiliary state ``(n_aux,)``: per layer U_A, log α, U_B, log β of the damped factors
        Â = A + π√γ I, B̂ = B + √γ/π I at the training particles ``x (n, d)`` and Θ ``(P,)``.

        Raises:
            ValueError: the network's layers differ from the sizes :meth:`aux_size` was given."""
        factors = kronecker_factors(flow, x, theta, t, self.chunk)
        if [(b.shape[0], a.shape[0] - 1) for a, b in factors] != self.shapes:
            raise ValueError(f"KFACFlow: the network's linear layers {[(b.shape[0], a.shape[0] - 1) for a, b in factors]} "
                             f"(out, in) differ from its parameter sizes' {self.shapes}")
        traces = [(float(a.diagonal().mean()), float(b.diagonal().mean())) for a, b in factors]
        p = sum(o * (i + 1) for o, i in self.shapes)
        gamma = self.delta * sum(ta * tb * a.shape[0] * b.shape[0] for (ta, tb), (a, b) in zip(traces, factors)) / p
        if not (math.isfinite(gamma) and gamma > 0):  # a network with no output gradient at all
            gamma = self.delta
        parts = []
        for (ta, tb), (a, b) in zip(traces, factors):
            pi = math.sqrt(ta / tb) if ta > 0 and tb > 0 else 1.0
            for f, damp in ((a, pi * math.sqrt(gamma)), (b, math.sqrt(gamma) / pi)):
                ev, u = torch.linalg.eigh(f)
                parts += [u.reshape(-1), torch.log(ev.clamp_min(0.0) + damp)]
        return torch.cat(parts).to(theta).detach()

    def _factors(self, aux: Tensor):
        """Per layer ``(U_A, log α, U_B, log β)`` as views of the auxiliary state."""
        k = 0
        for o, i in self.shapes:
            m = i + 1
            ua, la = aux[k : k + m * m].view(m, m), aux[k + m * m : k + m * m + m]
            k += m * m + m
            ub, lb = aux[k : k + o * o].view(o, o), aux[k + o * o : k + o * o + o]
            k += o * o + o
            yield ua, la, ub, lb

    def apply(self, aux: Tensor, g: Tensor, power: float = 1.0) -> Tensor:
        r"""M^p g ``(P,) -> (P,)``, layer by layer: U_B diag(β^{−p}) U_Bᵀ [g_W | g_b] U_A diag(α^{−p}) U_Aᵀ."""
        out, k = [], 0
        for (o, i), (ua, la, ub, lb) in zip(self.shapes, self._factors(aux)):
            v = torch.cat([g[k : k + o * i].view(o, i), g[k + o * i : k + o * i + o].view(o, 1)], dim=1)
            v = ub @ ((ub.T @ v @ ua) * torch.exp(-power * lb)[:, None] * torch.exp(-power * la)[None, :]) @ ua.T
            out += [v[:, :i].reshape(-1), v[:, i]]
            k += o * i + o
        return torch.cat(out)

    def rates(self, grad: Tensor, aux: Tensor, eta: float) -> tuple[Tensor, Tensor]:
        """``(dΘ/dt (P,), dA/dt (n_aux,))`` = ``(−η M^p g, 0)``."""
        return -eta * self.apply(aux, grad, self.power), torch.zeros_like(aux)

    def preconditioner(self, aux: Tensor) -> Callable[[Tensor], Tensor]:
        """q ↦ M^{p/2} q ``(P,) -> (P,)``, the symmetric square root of the flow's M^p (the stiffness
        estimate's M^{p/2}∇²_Θ L M^{p/2})."""
        return lambda q: self.apply(aux, q, 0.5 * self.power)

    def config(self) -> dict:
        """JSON form (``result.config``, metrics)."""
        return {"name": self.name, "delta": self.delta, "every": self.every, "power": self.power}

    def __repr__(self) -> str:
        return f"KFACFlow(delta={self.delta}, every={self.every}, power={self.power})"
