r"""The SBTM right-hand side, as torchdiffeq ODE functions.

Coupled flow (``training="flow"``), :class:`SBTMFlow`, state y = vec(X) ⊕ Θ [⊕ ℓ]::

    dX/dt = ∇log π_t(X) − s_Θ(X)                          X: (n, d)
    dΘ/dt = −η(t) ∇_Θ L(s_Θ, X),                           Θ: (P,)
            L(s, X) = (1/n) Σ_i |s(Xⁱ)|² + 2 ∇·s(Xⁱ)
    dℓ/dt = −∇·(∇log π_t − s_Θ)(X) = −Δlog π_t(X) + ∇·s_Θ(X)   ℓ = log f_t(X): (n,), optional

Discrete training (``training="steps"``, the paper's algorithm), :class:`SBTMSteps`:
before each time step the network takes K optimizer steps on L at the current particles
(torchdiffeq's ``callback_step`` hook); then the solver moves the particles with the same
particle velocity ∇log π_t − s_Θ with Θ frozen. Heun's corrector evaluates ∇log π_t at t+dt.

Both share :func:`particle_rates`, the particle part of the RHS.

Held-out ("passive") particles (``holdout=m``): both states end with a block
vec(X̃) [⊕ ℓ̃], X̃ ``(m, d)``, ℓ̃ = log f_t(X̃) ``(m,)``, moved by the same velocity
∇log π_t − s_Θ (and dℓ̃/dt = −Δlog π_t(X̃) + ∇·s_Θ(X̃)) but absent from the loss L, so
they are fresh draws from f_t that s_Θ never saw.  Their rates are computed in separate
calls (network, ∇log π_t, probes from ``holdout_generator``), so the training block's
arithmetic is the same as without them: with a fixed-step Runge–Kutta or Adams–Bashforth
solver (whose update is elementwise) the training particles and Θ are bitwise those of the run
with ``holdout=0`` (``rkc`` too: its stage counts are estimated on the training block alone).
Solvers that take a norm of the state are not: adaptive solvers see the whole state
in their error norm, held-out block included — deliberately, so that ℓ̃, the
quantity the held-out particles exist for, is integrated to the requested tolerance too —, so
their step sizes, hence the training trajectory, differ from the ``holdout=0`` run at the level
of rtol/atol; likewise ``implicit_adams`` / ``fixed_adams`` stop their corrector iteration on
an L∞ test over the whole state, which the held-out block can prolong.  To keep the training
steps of an adaptive run, pass a ``norm`` in ``solver_options`` that ignores the last
``m·(d + 1)`` entries (at the price of uncontrolled held-out error).
"""

from __future__ import annotations

import numbers
from typing import Callable

import torch
from torch import Tensor

from .errors import SamplingError
from .eta import EtaSchedule, as_eta
from .gn_flow import CholeskyFactor
from .losses import CHUNK, divergence, make_probes, map_rows, resolve_divergence, row_blocks, score_matching_grad, score_matching_terms
from .paths import Path, as_path
from .paths import time_float as _tfloat
from .score import at_time, flatten_params, functional_score, make_optimizer, unflatten_params
from .theta_flow import DiagGNFlow, GNFlow, GradientFlow, KFACFlow, RMSpropFlow, resolve_theta_flow

#: Default number of particles in the score loss (``batch`` of ``sample``): see README "Scale".
DEFAULT_BATCH = 4096

__all__ = ["DEFAULT_BATCH", "SBTMFlow", "SBTMSteps", "particle_rates", "passive_rates", "check_holdout", "check_batch"]


def check_holdout(holdout) -> int:
    """``holdout`` as an ``int`` m ≥ 0 (the number of held-out particles).

    Raises:
        ValueError: not a non-negative integer (bools and floats are refused)."""
    if isinstance(holdout, bool) or not isinstance(holdout, numbers.Integral) or holdout < 0:
        raise ValueError(f"holdout must be a non-negative integer (number of held-out particles), got {holdout!r}")
    return int(holdout)


def check_batch(batch) -> int | None:
    """``batch`` as ``None`` (train on every particle) or an ``int`` m ≥ 2.

    Raises:
        ValueError: not None and not an integer ≥ 2 (bools and floats are refused)."""
    if batch is None:
        return None
    if isinstance(batch, bool) or not isinstance(batch, numbers.Integral) or batch < 2:
        raise ValueError(f"batch must be None (all particles) or an integer >= 2 (particles in the score loss), got {batch!r}")
    return int(batch)


def particle_rates(
    path: Path,
    t: float | Tensor,
    x: Tensor,
    s: Tensor,
    div_s: Tensor | None = None,
    check_finite: bool = True,
    probes: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    r"""Particle velocity v = ∇log π_t(x) − s(x) ``(n, d)`` and, when ``div_s (n,)`` is
    given, the log-density rate −∇·v = −Δlog π_t(x) + ∇·s(x) ``(n,)``.

    With Hutchinson ``probes (m, n, d)`` (the ones ``div_s`` was estimated with), an autograd
    Laplacian of log π_t uses the same probes, so the rate is the unbiased estimate
    −mean_v vᵀ(∇²log π_t − ∂s)v of −∇·v: its variance, 2‖sym(∇v)‖²_F off the diagonal
    (Rademacher), vanishes as s → ∇log π_t, whereas an exact Laplacian with a Hutchinson ∇·s
    keeps the variance of vᵀ∂s v.  Analytic Laplacians (Gaussian, mixture) ignore the probes.

    Raises:
        SamplingError: if ∇log π_t is NaN/inf at some particles (names t and the count).
    """
    g = path.score(x, t)
    if check_finite:
        bad = ~torch.isfinite(g).all(-1)
        if bad.any():
            k = int(bad.sum())
            i = int(bad.nonzero()[0, 0])
            raise SamplingError(
                f"target score ∇log π_t is NaN/inf at {k} of {x.shape[0]} particles at t={_tfloat(t):.6g} "
                f"(first at x={x[i].tolist()}); check the target's score/log_prob on that region, "
                "or use a smaller step",
                t=_tfloat(t),
            )
    v = g - s
    if div_s is None:
        return v, None
    return v, div_s - path.laplacian(x, t, probes)


def passive_rates(
    path: Path,
    t: float | Tensor,
    x: Tensor,
    score_fn: Callable[[Tensor], Tensor],
    divergence_method: str,
    probes: Tensor | None = None,
    track_logdensity: bool = False,
    check_finite: bool = True,
    chunk: int | None = CHUNK,
) -> tuple[Tensor, Tensor | None]:
    r"""Rates of particles that move with the learned velocity but are not trained on: held-out
    particles, and the particles outside the mini-batch when ``batch`` < n.  Returns
    ``(v = ∇log π_t(x) − s(x) (n, d), −∇·v (n,) or None)`` (the latter with
    ``track_logdensity``), evaluated without a graph in blocks of ``chunk`` particles
    (memory of one block); see :func:`particle_rates` for ``probes (m, n, d)`` and the errors."""
    with torch.no_grad():
        if track_logdensity:
            s, div = divergence(score_fn, x, divergence_method, probes, chunk)
        else:
            s, div = map_rows(score_fn, x, chunk), None
        return particle_rates(path, t, x, s, div, check_finite, probes)


#: Derivative returned for a non-finite trial state of an adaptive solver: finite but so large
#: that the step's error estimate rejects it and the step size shrinks.
REJECT_VALUE = 1e15

_STIFF_HINT = (
    "the coupled X/Θ system is probably stiff (η times the largest curvature of the loss in Θ "
    "exceeds the solver's stability limit 2/dt): use solver='rkc' (the flow's default, stable for any "
    "η·λ_max·dt), lower eta or dt, or an adaptive solver such as solver='dopri5'. If the solver already "
    "was 'rkc', the curvature grew faster than its spectral estimate follows (e.g. on a dilation path) or "
    "the flow itself diverges: lower eta, or use training='steps'"
)


class _Base(torch.nn.Module):
    def __init__(self, path, score_model, divergence, probes, probe_distribution, generator, track_logdensity, check_finite,
                 holdout=0, holdout_generator=None, max_nfe=None, reject_nonfinite=False):
        super().__init__()
        #: m, the number of held-out particles at the end of the state.
        self.holdout = check_holdout(holdout)
        #: generator of the held-out particles' Hutchinson probes (kept apart from ``generator``
        #: so that they do not shift the training stream).
        self.holdout_generator = holdout_generator
        self.holdout_probes: Tensor | None = None
        self.path = as_path(path)
        self.model = score_model
        self.dim = self.path.dim
        self.divergence = resolve_divergence(divergence, self.dim)
        if int(probes) < 1:
            raise ValueError(f"probes must be >= 1, got {probes}")
        self.n_probes = int(probes)
        self.probe_distribution = probe_distribution
        self.generator = generator
        self.track_logdensity = bool(track_logdensity)
        self.check_finite = check_finite
        self.probes: Tensor | None = None
        self.nfe = 0
        self.max_nfe: int | None = max_nfe
        #: for adaptive solvers: a non-finite trial state returns REJECT_VALUE derivatives
        #: (the solver rejects the step and shrinks it) instead of raising.
        self.reject_nonfinite = bool(reject_nonfinite)
        self.configure_scale()

    # ---- scale: mini-batches, blocks, shards (see configure_scale) -----------------------
    def configure_scale(self, batch: int | None = None, chunk: int | None = CHUNK, comm=None, batch_seed: int = 0,
                        generator: torch.Generator | None = None) -> None:
        r"""How the loss is spread over the particles.

        Args:
            batch: m, the number of particles in the score loss (None: all).  :class:`SBTMSteps`
                draws a fresh mini-batch of m particles (without replacement, from
                ``batch_generator``, seeded with ``batch_seed``) for every optimizer step; :class:`SBTMFlow` trains on the
                fixed subset :attr:`batch_index` (set per output interval by
                :meth:`choose_batch`, so the right-hand side stays a function of (t, y)).  All
                particles move; those outside the batch get their rates from :func:`passive_rates`,
                like held-out particles.
            chunk: block size of every per-particle computation (memory of one block).
            comm: a :class:`~sbtm_flows.distributed.Comm`: this process holds a shard of the
                particles; the loss gradient (and the loss) are summed over the ranks, the loss
                being divided by the total count, and the batch m is split over the ranks in
                proportion to their shards.
            generator: this process's generator of the training particles' Hutchinson probes
                (``None``: keep the one the dynamics were built with).
        """
        if generator is not None:
            self.generator = generator
        self.batch = check_batch(batch)
        self.chunk = chunk
        self.comm = comm
        self.batch_seed = int(batch_seed) % 2**63
        self.batch_generator = torch.Generator().manual_seed(self.batch_seed)
        #: rows of the training particles in the flow's loss (None: all of them).
        self.batch_index: Tensor | None = None

    def local_batch(self, n: int) -> int:
        """The number of this process's n particles in the loss: min(n, m) in one process, the
        share ⌈m·n/N⌉ of a shard of n of N particles under a ``comm``; n when ``batch`` is None."""
        if self.batch is None:
            return n
        if self.comm is None:
            return min(n, self.batch)
        return min(n, -(-self.batch * n // self.comm.count(n)))

    def choose_batch(self, n: int, k: int) -> None:
        """Fix the flow's training subset for output interval k: :meth:`local_batch` rows drawn
        without replacement by a generator seeded with ``batch_seed`` + 1 + k (a function of k
        alone, so a resumed run picks the same subsets); all rows when m ≥ n."""
        m = self.local_batch(n)
        if m >= n:
            self.batch_index = None
            return
        g = torch.Generator().manual_seed((self.batch_seed + 1 + int(k)) % 2**63)
        self.batch_index = torch.randperm(n, generator=g)[:m].sort().values

    def _total(self, k: int) -> int:
        return k if self.comm is None else self.comm.count(k)

    def _reduce(self, grads: list[Tensor]) -> list[Tensor]:
        """Sum a list of gradients over the ranks (one all-reduce of their concatenation)."""
        if self.comm is None:
            return grads
        flat = self.comm.sum(torch.cat([g.reshape(-1) for g in grads]))
        return [u.view_as(g) for u, g in zip(flat.split([g.numel() for g in grads]), grads)]

    def _nonfinite(self, t, y: Tensor, what: str, hint: str) -> Tensor:
        """Reject the trial step (adaptive solvers) or raise :class:`SamplingError`."""
        if self.reject_nonfinite:
            return torch.full_like(y, REJECT_VALUE)
        raise SamplingError(f"{what} became NaN/inf at t={_tfloat(t):.6g}; {hint}", t=_tfloat(t))

    def _count(self, t) -> None:
        self.nfe += 1
        if self.max_nfe is not None and self.nfe > self.max_nfe:
            raise SamplingError(
                f"max_nfe={self.max_nfe} right-hand-side evaluations used up at t={_tfloat(t):.6g}: the solver is "
                "taking tiny steps, the coupled system is stiff (large eta); lower eta or use larger tolerances",
                t=_tfloat(t),
            )

    def draw_probes(self, n: int, like: Tensor) -> Tensor | None:
        """Draw fresh Hutchinson probes ``(k, n, d)`` for n particles from ``generator`` (dtype and
        device of ``like``), keep them as :attr:`probes` and return them; ``None`` (nothing drawn)
        for the exact divergence."""
        if self.divergence != "hutchinson":
            return None
        self.probes = make_probes(self.n_probes, n, self.dim, self.probe_distribution, self.generator, like.dtype, like.device)
        return self.probes

    def probes_for(self, x: Tensor) -> Tensor | None:
        """The Hutchinson probes ``(k, n, d)`` of the particles ``x (n, d)``: the current ones,
        drawn afresh only when there are none for n particles on x's device; ``None`` for the
        exact divergence."""
        if self.divergence != "hutchinson":
            return None
        if self.probes is None or self.probes.shape[1] != x.shape[0] or self.probes.device != x.device:
            self.draw_probes(x.shape[0], x)
        return self.probes

    # ---- checkpoints --------------------------------------------------------------------
    def run_state(self) -> dict:
        """What a checkpoint needs to continue these dynamics bitwise (plain tensors and data):
        the evaluation count, the Hutchinson probes (training and held-out) and the states of
        the probe, held-out and mini-batch generators."""
        out: dict = {"nfe": int(self.nfe)}
        for name in ("probes", "holdout_probes"):
            out[name] = None if getattr(self, name) is None else getattr(self, name).cpu()
        for name in ("generator", "holdout_generator", "batch_generator"):
            out[name] = None if getattr(self, name) is None else getattr(self, name).get_state()
        return out

    def load_run_state(self, state: dict, like: Tensor) -> None:
        """Inverse of :meth:`run_state` (probes moved to the dtype and device of ``like``)."""
        self.nfe = int(state["nfe"])
        for name in ("probes", "holdout_probes"):
            if state.get(name) is not None:
                setattr(self, name, state[name].to(like))
        for name in ("generator", "holdout_generator", "batch_generator"):
            if state.get(name) is not None and getattr(self, name) is not None:
                getattr(self, name).set_state(state[name])

    # ---- the held-out block: the last m·(d [+ 1]) entries of every state ----------------
    def _holdout_len(self) -> int:
        return self.holdout * (self.dim + int(self.track_logdensity))

    def training_length(self, y: Tensor) -> int:
        """Number of entries of a state before the held-out block (X, Θ, ℓ: what the training sees)."""
        return y.shape[-1] - self._holdout_len()

    def _head(self, y: Tensor) -> Tensor:
        """The training part of a state (everything before the held-out block)."""
        return y[: y.shape[-1] - self._holdout_len()]

    def split_holdout(self, y: Tensor) -> tuple[Tensor, Tensor | None]:
        """``(X̃ (m, d), ℓ̃ (m,) or None)``: the held-out particles and, when tracked, their
        log-density log f_t(X̃), from a state (views; ``X̃`` is ``(0, d)`` when m = 0)."""
        tail = y[y.shape[-1] - self._holdout_len() :]
        md = self.holdout * self.dim
        return tail[:md].view(self.holdout, self.dim), (tail[md:] if self.track_logdensity else None)

    def theta_block(self, y: Tensor) -> Tensor | None:
        """Θ ``(P,)`` from a state (a view), or ``None`` when the state has no Θ block (the
        discrete training keeps Θ in the network)."""
        return None

    def aux(self, y: Tensor) -> Tensor:
        """The Θ dynamics' auxiliary state ``(A,)`` as a view of y (empty when it has none, as here)."""
        return y[:0]

    def aux_block(self, y: Tensor) -> Tensor | None:
        """:meth:`aux`, or ``None`` when it is empty (the form :meth:`blocks` reports)."""
        a = self.aux(y)
        return a if a.numel() else None

    def blocks(self, y: Tensor) -> dict[str, Tensor | None]:
        """The blocks of a state as views: ``x (n, d)`` (training particles), ``theta (P,)``,
        ``theta_aux (A,)`` (the Θ dynamics' auxiliary state, e.g. RMSprop's second moments),
        ``log_density (n,)``, ``holdout_x (m, d)``, ``holdout_log_density (m,)`` (``None`` when the
        state has no such block); concatenated flat in this order they are y."""
        n = self.n_particles(y)
        xh, lh = self.split_holdout(y) if self.holdout else (None, None)
        return {"x": y[: n * self.dim].view(n, self.dim), "theta": self.theta_block(y), "theta_aux": self.aux_block(y),
                "log_density": self.log_density(y), "holdout_x": xh, "holdout_log_density": lh}

    def _append_holdout(self, parts: list[Tensor], x: Tensor | None, log_density: Tensor | None, like: Tensor) -> Tensor:
        """cat(parts) ⊕ vec(X̃₀) [⊕ ℓ̃₀]: the initial state with its held-out block."""
        if self.holdout == 0:
            if x is not None and x.shape[0] > 0:
                raise ValueError(f"holdout_x0 has {x.shape[0]} rows but the dynamics were built with holdout=0")
            return torch.cat(parts)
        if x is None or x.shape != (self.holdout, self.dim):
            raise ValueError(
                f"holdout={self.holdout} needs holdout_x0 of shape ({self.holdout}, {self.dim}), "
                f"got {None if x is None else tuple(x.shape)}"
            )
        parts = [*parts, x.reshape(-1).to(like)]
        if self.track_logdensity:
            if log_density is None or log_density.shape != (self.holdout,):
                raise ValueError(f"track_logdensity=True needs holdout_log_density0 ({self.holdout},) = log f_0(X̃_0)")
            parts.append(log_density.to(like))
        self._draw_holdout_probes(like)
        return torch.cat(parts)

    def _draw_holdout_probes(self, like: Tensor) -> None:
        if self.divergence == "hutchinson" and self.holdout > 0:
            self.holdout_probes = make_probes(
                self.n_probes, self.holdout, self.dim, self.probe_distribution, self.holdout_generator, like.dtype, like.device
            )

    def holdout_velocity(self, t, y: Tensor, score_fn: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor | None, Tensor]:
        """``(v (m, d), −∇·v (m,) or None, lost (m,) bool)`` at the held-out particles.

        A held-out particle is *lost* where its position or its rates are not finite (e.g. it
        wandered where the network extrapolates wildly and the target's score overflows): its
        rates are set to 0, so it stays where it is and the run goes on — held-out particles are
        a diagnostic and never stop a run.  ∇·s only when ℓ̃ is tracked; no gradient reaches Θ."""
        x = self.split_holdout(y)[0].detach()
        lost = ~torch.isfinite(x).all(-1)
        x = torch.where(lost[:, None], torch.zeros_like(x), x)
        probes = None
        if self.divergence == "hutchinson":
            if self.holdout_probes is None or self.holdout_probes.device != x.device:
                self._draw_holdout_probes(x)
            probes = self.holdout_probes
        v, dl = passive_rates(self.path, t, x, score_fn, self.divergence, probes, self.track_logdensity, False, self.chunk)
        lost = lost | ~torch.isfinite(v).all(-1)
        if dl is not None:
            lost = lost | ~torch.isfinite(dl)
            dl = torch.where(lost, torch.zeros_like(dl), dl)
        return torch.where(lost[:, None], torch.zeros_like(v), v), dl, lost

    def _holdout_rates(self, t, y: Tensor, score_fn: Callable[[Tensor], Tensor]) -> list[Tensor]:
        """[vec(v(X̃)) [, −∇·v(X̃)]] for the held-out block ([] when m = 0)."""
        if self.holdout == 0:
            return []
        v, dl, _ = self.holdout_velocity(t, y, score_fn)
        return [v.reshape(-1)] if dl is None else [v.reshape(-1), dl]


class SBTMFlow(_Base):
    r"""The coupled particle/network ODE (see the module docstring), torchdiffeq's
    ``forward(t, y)`` contract.

    Args:
        path: a target (constant path) or an annealing path with ``score(x, t)``.
        score_model: the network s_Θ, ``(n, d) -> (n, d)``; its current parameters are Θ₀.
        eta: η, a number, a callable ``t -> float``, ``"auto"``, ``"ntk"`` or an
            :class:`~sbtm_flows.eta.EtaSchedule` (made one by :func:`~sbtm_flows.eta.as_eta`);
            a ``stateful`` schedule (e.g. :class:`~sbtm_flows.ntk.NTKEta`) is evaluated from
            the current state, so the RHS stays a function of (t, y).
        divergence: ``"exact"``, ``"hutchinson"`` or ``"auto"`` (exact for d ≤ 16).
        probes: number of Hutchinson probes (fixed for the run, so the RHS is a
            deterministic function of the state, as adaptive solvers need).
        track_logdensity: append ℓ = log f_t(X) ``(n,)`` to the state.
        holdout: m held-out particles at the end of the state (see the module docstring);
            ``holdout_generator`` draws their Hutchinson probes.
        max_nfe: raise :class:`SamplingError` after this many right-hand-side evaluations (``None``: no limit).
        reject_nonfinite: for adaptive solvers: a non-finite trial state gets derivatives
            ``REJECT_VALUE`` (the solver rejects the step and shrinks it) instead of an error.

    Example::

        flow = SBTMFlow(target, ScoreMLP(dim=1), eta=10.0)
        y0 = flow.initial_state(x0)
        ys = torchdiffeq.odeint(flow, y0, t, method="dopri5")
        x_T, theta_T = flow.split(ys[-1])
    """

    def __init__(
        self,
        path,
        score_model: torch.nn.Module,
        eta: float | Callable[[float], float] | str | EtaSchedule = 5.0,
        divergence: str = "auto",
        probes: int = 1,
        probe_distribution: str = "rademacher",
        generator: torch.Generator | None = None,
        track_logdensity: bool = False,
        check_finite: bool = True,
        holdout: int = 0,
        holdout_generator: torch.Generator | None = None,
        max_nfe: int | None = None,
        reject_nonfinite: bool = False,
        theta_flow: str | GradientFlow | RMSpropFlow | DiagGNFlow | KFACFlow | GNFlow = "gd",
    ):
        super().__init__(path, score_model, divergence, probes, probe_distribution, generator, track_logdensity, check_finite,
                         holdout, holdout_generator, max_nfe, reject_nonfinite)
        #: the Θ dynamics (:mod:`sbtm_flows.theta_flow`) and the length of its auxiliary block A
        self.theta_flow = resolve_theta_flow(theta_flow)
        self.eta = eta
        self.n_params = sum(p.numel() for p in score_model.parameters())
        self.n_aux = self.theta_flow.aux_size([p.numel() for p in score_model.parameters()])

    @property
    def eta(self) -> EtaSchedule:
        """The η schedule (:class:`~sbtm_flows.eta.EtaSchedule`); assigning a number, a callable
        of t or a string makes it one with :func:`~sbtm_flows.eta.as_eta`."""
        return self.eta_schedule

    @eta.setter
    def eta(self, value) -> None:
        self.eta_schedule = as_eta(value)

    def eta_at(self, t: float | Tensor, x: Tensor | None = None, theta: Tensor | None = None) -> float:
        """η(t), or η(t, X, Θ) for a ``stateful`` schedule (called without a state, such a
        schedule returns its largest value)."""
        return float(self.eta(t, x, theta, self if x is not None else None))

    # ---- state layout -------------------------------------------------------------
    def initial_state(
        self,
        x0: Tensor,
        theta0: Tensor | None = None,
        log_density0: Tensor | None = None,
        holdout_x0: Tensor | None = None,
        holdout_log_density0: Tensor | None = None,
        aux0: Tensor | None = None,
        t0: float = 0.0,
    ) -> Tensor:
        """y0 = vec(X₀) ⊕ Θ₀ ⊕ A₀ [⊕ ℓ₀] [⊕ vec(X̃₀) [⊕ ℓ̃₀]], a 1-D tensor.  Θ₀ defaults to the
        model's parameters; A₀ (the Θ dynamics' auxiliary state, empty for ``"gd"``) to
        ``theta_flow.start(∇_Θ L)`` at X₀ (the training rows), Θ₀ and time ``t0``;
        ``log_density0 (n,)`` (log f_0 at X₀) is required when tracking the
        log-density; ``holdout_x0 (m, d)`` (and ``holdout_log_density0 (m,)``) when m > 0."""
        theta0 = flatten_params(self.model).to(x0) if theta0 is None else theta0.to(x0)
        self.draw_probes(x0.shape[0], x0)
        if aux0 is None:
            aux0 = self.initial_aux(x0, theta0.reshape(-1).detach(), t0)
        parts = [x0.reshape(-1), theta0.reshape(-1), aux0.reshape(-1).to(x0)]
        if self.track_logdensity:
            if log_density0 is None:
                raise ValueError("track_logdensity=True needs log_density0 (n,) = log f_0(X_0)")
            parts.append(log_density0.reshape(-1).to(x0))
        return self._append_holdout(parts, holdout_x0, holdout_log_density0, x0)

    def initial_aux(self, x: Tensor, theta: Tensor, t: float | Tensor = 0.0) -> Tensor:
        """A₀ = ``theta_flow.start(∇_Θ L)`` at particles ``x (n, d)`` (their training rows),
        parameters Θ ``(P,)`` and time t: ``(n_aux,)``, empty (no gradient computed) for ``"gd"``."""
        # a piecewise-refreshed preconditioner (refresh_every declared: diag's D, kfac's factors, gn's
        # Cholesky factor) is re-estimated from (X, Θ) by theta_flow.estimate
        estimated = self.theta_flow.refresh_every is not None
        if self.n_aux == 0 and not estimated:
            return theta.new_zeros(0)
        xb, pb = self.training_rows(x.detach())
        if estimated:  # (GNFlow keeps its factor on itself and returns an empty A)
            return self.theta_flow.estimate(self, xb, theta, t)
        return self.theta_flow.start(self.loss_and_grad(xb, theta, t=t, probes=pb)[1]).detach()

    def n_particles(self, y: Tensor) -> int:
        """n (training particles), inferred from the state length."""
        return (y.shape[-1] - self._holdout_len() - self.n_params - self.n_aux) // (self.dim + int(self.track_logdensity))

    def aux(self, y: Tensor) -> Tensor:
        """A ``(n_aux,)``, the Θ dynamics' auxiliary state (a view; empty for ``"gd"``)."""
        start = self.n_particles(y) * self.dim + self.n_params
        return y[start : start + self.n_aux]

    def refresh_aux(self, y: Tensor, t: float | Tensor) -> Tensor:
        """The state y ``(len,)`` with A re-estimated from its (X, Θ) at time t, for a Θ dynamics
        whose auxiliary state is refreshed piecewise (``theta_flow.refresh_every``, :class:`DiagGNFlow`);
        y itself otherwise."""
        if self.theta_flow.refresh_every is None:
            return y
        x, theta = self.split(y)
        y = y.clone()
        self.aux(y).copy_(self.initial_aux(x, theta.detach(), t))
        return y

    def preconditioner(self, y: Tensor) -> Tensor | Callable[[Tensor], Tensor] | CholeskyFactor | None:
        """M with dΘ/dt ≈ −η·M·∇_Θ L at state y: a diagonal D ``(P,)``, for a non-diagonal M
        (``"kfac"``) the map q ↦ M^{1/2} q ``(P,) -> (P,)``, for a factored M = C·Cᵀ (``"gn"``) an
        object with ``root(q)`` = C·q and ``root_t(q)`` = Cᵀ·q (:class:`~sbtm_flows.gn_flow.CholeskyFactor`),
        or ``None`` (the identity, ``"gd"``)."""
        return self.theta_flow.preconditioner(self.aux(y).detach())

    def split(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """``(X (n, d), Θ (P,))`` from a state (views; X: the training particles)."""
        n = self.n_particles(y)
        nd = n * self.dim
        return y[:nd].view(n, self.dim), y[nd : nd + self.n_params]

    def theta_block(self, y: Tensor) -> Tensor:
        """Θ ``(P,)`` from a state (a view)."""
        return self.split(y)[1]

    def log_density(self, y: Tensor) -> Tensor | None:
        """ℓ = log f_t(X) ``(n,)`` from a state, or ``None`` when not tracked."""
        if not self.track_logdensity:
            return None
        n = self.n_particles(y)
        return self._head(y)[-n:]

    def params(self, theta: Tensor) -> dict[str, Tensor]:
        """Θ as ``{name: tensor}`` (views) for ``torch.func.functional_call``."""
        spec = getattr(self, "_param_spec", None)
        if spec is None:  # names and shapes of the parameters, read once (the RHS calls this every time)
            spec = self._param_spec = [(name, p.numel(), p.shape) for name, p in self.model.named_parameters()]
        if theta.numel() != sum(k for _, k, _ in spec):
            return unflatten_params(self.model, theta)  # raises with the sizes
        return {name: chunk.view(shape) for (name, _, shape), chunk in zip(spec, theta.split([k for _, k, _ in spec]))}

    def score_fn(self, theta: Tensor, t: float | Tensor | None = None) -> Callable[[Tensor], Tensor]:
        """x ↦ s_Θ(x) (at time t, for a time-conditioned model) for a flat Θ."""
        params = self.params(theta)
        return lambda z: functional_score(self.model, params, z, t)

    def loss_and_grad(self, x: Tensor, theta: Tensor, create_graph: bool = False,
                      t: float | Tensor | None = None, probes: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(L, ∇_Θ L (P,), s (n, d), ∇·s (n,))`` at particles ``x``, parameters Θ and time t
        (``probes``: Hutchinson probes ``(m, n, d)``, default the flow's own for n particles).

        Accumulated over blocks of ``chunk`` particles, and summed over the ranks under a
        ``comm`` (then L and ∇_Θ L are those of all ranks' particles, s and ∇·s this rank's).
        With ``create_graph`` (and Θ requiring grad) the gradient is this process's part, in one
        graph differentiable in Θ (for Hessian-vector products, see :meth:`hvp`)."""
        probes = self.probes_for(x) if probes is None else probes
        th = theta if theta.requires_grad else theta.detach().requires_grad_(True)
        total = self._total(x.shape[0])
        if create_graph:
            with torch.enable_grad():
                terms, s, div = score_matching_terms(self.score_fn(th, t), x, self.divergence, probes)
                loss = terms.sum() / total
                (grad,) = torch.autograd.grad(loss, th, create_graph=True)
            return loss.detach(), grad, s.detach(), div.detach()
        with torch.enable_grad():  # (the views of Θ that score_fn makes must track it)
            loss, (grad,), s, div = score_matching_grad(self.score_fn(th, t), x, [th], self.divergence, probes,
                                                        total=total, chunk=self.chunk)
        if self.comm is not None:
            loss, grad = self._reduce([loss.reshape(1), grad])
            loss = loss[0]
        return loss, grad, s, div

    def training_rows(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """``(X_B (m, d), probes (k, m, d) or None)``: the particles in the loss (the subset
        :attr:`batch_index`, or all) and their Hutchinson probes."""
        probes = self.probes_for(x)
        if self.batch_index is None:
            return x, probes
        idx = self.batch_index.to(x.device)
        return x[idx], (None if probes is None else probes[:, idx])

    def hvp(self, x: Tensor, theta: Tensor, t: float | Tensor | None = None) -> Callable[[Tensor], Tensor]:
        r"""q ↦ ∇²_Θ L·q ``(P,) -> (P,)`` at particles ``x (n, d)`` (summed over the ranks under a
        ``comm``).  Up to ``chunk`` particles the graph of ∇_Θ L is built once and reused; above,
        each product is accumulated block by block (memory of one block, one double-backward
        pass per block and product)."""
        th = theta.detach().clone().requires_grad_(True)
        probes = self.probes_for(x)
        blocks = row_blocks(x.shape[0], self.chunk)
        total = self._total(x.shape[0])

        def block_grad(b: slice) -> Tensor:
            with torch.enable_grad():
                terms = score_matching_terms(self.score_fn(th, t), x[b], self.divergence, None if probes is None else probes[:, b])[0]
                return torch.autograd.grad(terms.sum() / total, th, create_graph=True)[0]

        graph = block_grad(blocks[0]) if len(blocks) == 1 else None

        def product(q: Tensor) -> Tensor:
            if graph is not None:
                hv = torch.autograd.grad(graph, th, q, retain_graph=True)[0]
            else:
                hv = sum(torch.autograd.grad(block_grad(b), th, q)[0] for b in blocks)
            return hv if self.comm is None else self.comm.sum(hv)

        return product

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        """dy/dt at time t (see the module docstring)."""
        self._count(t)
        x, theta = self.split(y)
        x = x.detach()
        theta = theta.detach()
        if self.check_finite and not bool(torch.isfinite(self._head(y)).all()):
            return self._nonfinite(t, y, "the particles or the network parameters Θ", _STIFF_HINT)
        if self.batch_index is None:
            _, grad, s, div = self.loss_and_grad(x, theta, t=t)
            v, dl = particle_rates(self.path, t, x, s, div if self.track_logdensity else None, self.check_finite, self.probes)
        else:  # train on the subset, move every particle with the velocity of the passive ones
            xb, pb = self.training_rows(x)
            grad = self.loss_and_grad(xb, theta, t=t, probes=pb)[1]
            v, dl = passive_rates(self.path, t, x, self.score_fn(theta, t), self.divergence, self.probes,
                                  self.track_logdensity, self.check_finite, self.chunk)
        if self.check_finite and not torch.isfinite(grad).all():
            return self._nonfinite(t, y, "the loss gradient ∇_Θ L", _STIFF_HINT)
        dtheta, daux = self.theta_flow.rates(grad, self.aux(y).detach(), self.eta_at(t, x, theta))
        parts = [v.reshape(-1), dtheta, daux]
        if dl is not None:
            parts.append(dl)
        held_out = self._holdout_rates(t, y, self.score_fn(theta, t))
        return torch.cat(parts + held_out)


class SBTMSteps(_Base):
    r"""The paper's discrete algorithm as a torchdiffeq ODE function on
    y = vec(X) [⊕ ℓ] [⊕ vec(X̃) [⊕ ℓ̃]] (held-out particles X̃ are not trained on).

    Before every solver step (torchdiffeq's ``callback_step``) the network takes
    ``inner_steps`` optimizer steps on L at the current particles; during the step Θ is
    frozen and dX/dt = ∇log π_t(X) − s_Θ(X).

    Args:
        optimizer: ``"adam"``, ``"adamw"`` or ``"sgd"``; lr: its learning rate.
        inner_steps: K, optimizer steps per time step.
        Other arguments as in :class:`SBTMFlow`; Hutchinson probes (the held-out ones too) are
        redrawn every step.
    """

    def __init__(
        self,
        path,
        score_model: torch.nn.Module,
        inner_steps: int = 5,
        optimizer: str = "adam",
        lr: float = 1e-3,
        divergence: str = "auto",
        probes: int = 1,
        probe_distribution: str = "rademacher",
        generator: torch.Generator | None = None,
        track_logdensity: bool = False,
        check_finite: bool = True,
        holdout: int = 0,
        holdout_generator: torch.Generator | None = None,
        max_nfe: int | None = None,
        reject_nonfinite: bool = False,
    ):
        super().__init__(path, score_model, divergence, probes, probe_distribution, generator, track_logdensity, check_finite,
                         holdout, holdout_generator, max_nfe, reject_nonfinite)
        if int(inner_steps) < 0:
            raise ValueError(f"inner_steps must be >= 0, got {inner_steps}")
        self.inner_steps = int(inner_steps)
        self.optimizer = make_optimizer(score_model, optimizer, lr)
        self.train_steps = 0
        self.last_loss = float("nan")

    def initial_state(
        self,
        x0: Tensor,
        log_density0: Tensor | None = None,
        holdout_x0: Tensor | None = None,
        holdout_log_density0: Tensor | None = None,
    ) -> Tensor:
        """y0 = vec(X₀) [⊕ ℓ₀] [⊕ vec(X̃₀) [⊕ ℓ̃₀]] (arguments as in :meth:`SBTMFlow.initial_state`)."""
        parts = [x0.reshape(-1)]
        if self.track_logdensity:
            if log_density0 is None:
                raise ValueError("track_logdensity=True needs log_density0 (n,) = log f_0(X_0)")
            parts.append(log_density0.reshape(-1).to(x0))
        return self._append_holdout(parts, holdout_x0, holdout_log_density0, x0)

    def n_particles(self, y: Tensor) -> int:
        """n (training particles), inferred from the state length."""
        return (y.shape[-1] - self._holdout_len()) // (self.dim + int(self.track_logdensity))

    def split(self, y: Tensor) -> Tensor:
        """X ``(n, d)`` (the training particles) from a state (a view)."""
        n = self.n_particles(y)
        return y[: n * self.dim].view(n, self.dim)

    def log_density(self, y: Tensor) -> Tensor | None:
        """ℓ = log f_t(X) ``(n,)`` from a state, or ``None`` when not tracked."""
        return self._head(y)[-self.n_particles(y) :] if self.track_logdensity else None

    def fit(self, x: Tensor, t=None) -> float:
        """K optimizer steps on L at particles ``x (n, d)``; returns the last loss."""
        if self.inner_steps == 0:
            return self.last_loss
        x = x.detach()
        self.draw_probes(x.shape[0], x)
        model = at_time(self.model, t)
        params = [p for p in self.model.parameters() if p.requires_grad]
        n, m = x.shape[0], self.local_batch(x.shape[0])
        total = self._total(m)
        for _ in range(self.inner_steps):
            xb, pb = x, self.probes
            if m < n:  # a fresh mini-batch for every optimizer step (the paper's scheme)
                idx = torch.randperm(n, generator=self.batch_generator)[:m].to(x.device)
                xb, pb = x[idx], (None if pb is None else pb[:, idx])
            loss, grads, _, _ = score_matching_grad(model, xb, params, self.divergence, pb, total=total, chunk=self.chunk)
            loss, *grads = self._reduce([loss.reshape(1), *grads])
            for p, g in zip(params, grads):
                p.grad = g
            self.optimizer.step()
        self.train_steps += self.inner_steps
        self.last_loss = float(loss)
        if self.check_finite and not torch.isfinite(loss):
            raise SamplingError(
                f"the score-matching loss became NaN/inf at t={_tfloat(t) if t is not None else float('nan'):.6g}; "
                "lower lr or inner_steps",
                t=None if t is None else _tfloat(t),
            )
        return self.last_loss

    def run_state(self) -> dict:
        """:meth:`_Base.run_state` plus the network's parameters, the optimizer's state and the
        optimizer step count (the discrete training keeps Θ outside the ODE state)."""
        return {**super().run_state(), "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                "optimizer": self.optimizer.state_dict(), "train_steps": self.train_steps}

    def load_run_state(self, state: dict, like: Tensor) -> None:
        """Inverse of :meth:`run_state`."""
        super().load_run_state(state, like)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.train_steps = state["train_steps"]

    def callback_step(self, t0: Tensor, y0: Tensor, dt: Tensor) -> None:
        """torchdiffeq hook: train before each step (on the training particles only)."""
        self.fit(self.split(y0), t0)
        self._draw_holdout_probes(y0)

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        """dy/dt with Θ frozen."""
        self._count(t)
        x = self.split(y).detach()
        if self.check_finite and not torch.isfinite(x).all():
            return self._nonfinite(t, y, "the particles", "lower dt or lr, or use an adaptive solver")
        probes = self.probes_for(x)
        model = at_time(self.model, t)
        v, dl = passive_rates(self.path, t, x, model, self.divergence, probes, self.track_logdensity, self.check_finite,
                              self.chunk)
        held_out = self._holdout_rates(t, y, model)
        parts = [v.reshape(-1)] if dl is None else [v.reshape(-1), dl]
        return torch.cat(parts + held_out)
