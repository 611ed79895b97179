"""Fixes found by the hostile-user sweep (``benchmarks/robustness_sweep.py``): each case once
returned a silently wrong answer or failed deep inside torch instead of naming the problem."""

import math

import pytest
import torch

import sbtm_flows as sf

T2 = sf.Gaussian(torch.zeros(2), torch.eye(2))
T1 = sf.Gaussian(torch.zeros(1), torch.eye(1))
I1 = sf.Gaussian(torch.zeros(1), (1 - math.exp(-0.2)) * torch.eye(1))  # §5.1's initial law


def test_a_fixed_step_flow_that_crosses_its_stability_limit_stops():
    # §5.1 with midpoint at dt = 0.01, η = 5: η·λ_max·dt crosses 2 at t ≈ 0.5.  With two Lanczos
    # steps per check the monitor read 1.59 at most and the run returned Var X_1 = 0.685 (exact
    # 1 + e^{-2}(v0 - 1) = 0.889, 23 % low); with six it stops at t = 0.6.
    with pytest.raises(sf.SamplingError, match="became stiff at t=0.6.*'midpoint'.*solver='rkc'"):
        sf.sample(T1, method="sbtm", init=I1, n=500, t_final=1.0, solver="midpoint", seed=0)


@pytest.mark.parametrize("method", ["sbtm", "ula", "pis", "dis"])
@pytest.mark.parametrize("dt, match", [(1e-12, "dt=1e-12 gives 1e\\+1[12] steps"), (1e-300, "dt=1e-300 gives")])
def test_a_dt_too_small_to_integrate_is_named(method, dt, match):
    # before: 'Overflow when unpacking long long' or an attempt to allocate 800 GB
    kw = dict(iterations=2) if method in ("pis", "dis") else dict(t_final=0.1)
    with pytest.raises(ValueError, match=match + ".*raise dt"):
        sf.sample(T2, method=method, n=10, dt=dt, **kw)


def test_a_dt_that_underflows_at_t0_is_named():
    # 1e8 + 1e-9 == 1e8 in float64: no step would ever move t
    with pytest.raises(ValueError, match="dt=1e-09 underflows at t=1e\\+08"):
        sf.sample(T2, method="ula", n=10, t0=1e8, t_final=1e8 + 0.001, dt=1e-9)


@pytest.mark.parametrize("method", ["pis", "dis"])
def test_learned_diffusions_name_an_unknown_option(method):
    # before: TypeError "run_learned() got an unexpected keyword argument"
    with pytest.raises(ValueError, match=f"method='{method}' has no option 'init' \\(PIS and DIS start from .*"
                                         "it is an option of method='mala' / 'sbtm' / 'ula'"):
        sf.sample(T2, method=method, init=torch.zeros(5, 2))
    with pytest.raises(ValueError, match=f"method='{method}' has no option 'warmup'; it is an option of method='mala'"):
        sf.sample(T2, method=method, warmup=3)
    with pytest.raises(ValueError, match="save_every must be a positive integer, got 0"):  # before: 'step must be nonzero'
        sf.sample(T2, method=method, iterations=2, save_every=0)


def test_other_methods_name_the_learned_diffusions_options():
    with pytest.raises(ValueError, match="method='ula' has no option 'iterations'; it is an option of method='dis' / 'pis'"):
        sf.sample(T2, method="ula", iterations=3)


class _NaNTarget(sf.Gaussian):
    def score(self, x):
        return torch.full_like(x, float("nan"))


@pytest.mark.parametrize("method", ["pis", "dis"])
def test_learned_diffusions_name_a_nan_target_score(method):
    # before: "the controlled paths became NaN/inf; lower lr, raise steps or clip the score feature"
    with pytest.raises(sf.SamplingError, match="target's score ∇log π̃ is NaN/inf at 10 of 10 path points at t=0 "):
        sf.sample(_NaNTarget(torch.zeros(2), torch.eye(2)), method=method, n=10, iterations=2, batch_size=4)


class _LateNaN(torch.nn.Module):
    """N(3, I) with log π and ∇log π NaN where x₀ > 2 (reached only along the run); a duck-typed
    target (not a Target subclass) with both log_prob and score."""

    dim = 2

    def log_prob(self, x):
        return torch.where(x[:, 0] > 2.0, torch.nan, -0.5 * ((x - 3) ** 2).sum(-1))

    def score(self, x):
        return torch.where(x[:, :1] > 2.0, torch.nan, -(x - 3))


@pytest.mark.parametrize("method", ["pis", "dis"])
def test_learned_diffusions_name_a_target_that_turns_nan_along_the_paths(method):
    with pytest.raises(sf.SamplingError, match="target's score ∇log π̃ is NaN/inf at .* path points at t=0.[0-9]+ "):
        sf.sample(_LateNaN(), method=method, n=100, iterations=5, seed=0)


def test_a_duck_typed_target_keeps_its_log_prob():
    # before: as_path kept only the score, so MALA said "this target has only a score"
    with pytest.warns(RuntimeWarning, match="rejected as zero density"):  # the NaN region is counted and reported
        res = sf.sample(_LateNaN(), method="mala", init=sf.Gaussian(torch.zeros(2), 0.1 * torch.eye(2)), n=50, steps=20,
                        warmup=20, save_every=10, seed=0)
    assert torch.isfinite(res.particles).all() and float(res.particles[:, 0].max()) <= 2.0  # NaN region = rejected
    path = sf.paths.as_path(_LateNaN())
    x = torch.tensor([[0.0, 1.0]])
    assert torch.allclose(path.log_prob(x, 0.0), torch.tensor([-6.5]))


def test_the_sampler_set_ntk_ceiling_follows_the_tracked_curvature():
    # η="ntk" with heun2 on §5.1 ran at the start's ceiling 6.9 while λ_max grew 23 → 29 (z = 2.01 > 2
    # by t = 0.2, caught only once the monitor read λ_max properly); the ceiling now falls with λ_max
    eta = sf.ntk.NTKEta()
    eta.set_ceiling(6.9)
    eta.observe_curvature(40.0, 2.0, 0.01)
    assert eta.ceiling == pytest.approx(0.8 * 2.0 / (40.0 * 0.01))
    assert eta.state_dict() == {"ceiling": eta.ceiling, "auto_ceiling": True}
    eta.observe_curvature(10.0, 2.0, 0.01)  # it never rises above the start's
    assert eta.ceiling == pytest.approx(4.0)
    mine = sf.ntk.NTKEta(ceiling=6.9)  # a user's ceiling is theirs
    mine.observe_curvature(40.0, 2.0, 0.01)
    assert mine.ceiling == 6.9


def test_scipy_solver_is_refused_saying_why():
    # a torchdiffeq method name, so "unknown solver" (the message before) was wrong
    with pytest.raises(ValueError, match=r"scipy_solver' is not supported by sample\(\): .*use dopri5"):
        sf.sample(T1, method="sbtm", n=20, t_final=0.1, solver="scipy_solver")


def test_a_float32_step_size_underflow_suggests_float64():
    # dopri8 on §5.1 in float32 underflows at t ≈ 0.25 (n = 200; n = 500 at 0.27, with rtol 1e-5 or
    # 1e-3); in float64 it runs (n = 500: Var X_1 = 0.8948, exact 0.8892)
    with pytest.raises(sf.SamplingError, match="'dopri8': step size underflow .*or run in dtype=torch.float64"):
        sf.sample(T1, method="sbtm", init=I1, n=200, t_final=0.25, solver="dopri8", seed=0)


def test_a_collapsed_score_network_stops_the_run():
    # gmm40-50d, n = 300, the flow at η = 5: every hidden unit saturates, s_Θ → 0 (loss exactly 0)
    # by t = 0.2 and the particles follow ∇log π alone; before, the run returned them with sd 0.37
    # at t = 1 where ULA and the discrete training keep ≈ 1.0
    target = sf.targets.benchmarks.gmm40(50)
    with pytest.raises(sf.SamplingError, match="score network collapsed at t=0.2: mean \\|s_Θ\\|² = .*\\(Cramér–Rao\\)"):
        sf.sample(target, method="sbtm", n=300, t_final=0.2, save_every=20, seed=0)


def test_the_collapse_guard_passes_a_fitted_network():
    # the same target with the discrete training: mean |s_Θ|² ≈ 47 against the bound d²/tr Cov ≈ 70
    # (an underfitted but working network stays far above 1 % of it)
    res = sf.sample(sf.targets.benchmarks.gmm40(50), method="sbtm", training="steps", n=300, t_final=0.2,
                    save_every=20, seed=0)
    assert torch.isfinite(res.particles).all() and float(res.particles.std(0).min()) > 0.9
