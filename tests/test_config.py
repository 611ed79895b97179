"""Typed configurations: an option that the chosen configuration does not use is refused with
a message naming the configuration that would use it; `training="auto"` follows the options
given; the stored configuration is the resolved one and rebuilds the run."""

import pytest
import torch

import sbtm_flows as sf
from sbtm_flows.config import SBTMConfig, ULAConfig, build_config

T1 = sf.Gaussian(torch.zeros(1), torch.eye(1))
KW = dict(init=sf.Gaussian(torch.zeros(1), 0.5 * torch.eye(1)), n=20, t_final=0.02, dt=0.01, init_steps=5)


@pytest.mark.parametrize(
    ("method", "kw", "match"),
    [
        ("sbtm", dict(training="steps", eta=123.0), r"eta=123.0 is not used by training='steps'; it is an option of training='flow'"),
        ("sbtm", dict(training="steps", eta=2.0), "option of training='flow'"),
        ("sbtm", dict(training="steps", record_ntk_every=1), "record_ntk_every.*training='flow'"),
        ("sbtm", dict(training="flow", inner_steps=99), r"inner_steps=99 is not used by training='flow'; it is an option of training='steps'"),
        ("sbtm", dict(training="flow", lr=5.0), "lr=5.0 .*training='steps'"),
        ("sbtm", dict(training="flow", optimizer="sgd"), "optimizer.*training='steps'"),
        ("sbtm", dict(eta=1.0, inner_steps=3), "choose one training"),
        ("sbtm", dict(solver="heun2", rtol=1e-3), "rtol=0.001 is not used by the fixed-step solver 'heun2'; it is an option of adaptive"),
        ("sbtm", dict(score_model=torch.nn.Linear(1, 1), hidden=(8,)), r"hidden.*custom score_model.*score_model=None"),
        ("sbtm", dict(sde_solver="euler"), "method='sbtm' has no option 'sde_solver'; it is an option of method='ula'"),
        ("ula", dict(eta=2.0), "method='ula' has no option 'eta'; it is an option of method='sbtm'"),
        ("ula", dict(training="flow"), "option of method='sbtm'"),
        ("ula", dict(etta=2.0), "no method takes it"),
    ],
)
def test_an_unused_option_is_refused_naming_who_uses_it(method, kw, match):
    base = KW if method == "sbtm" else {k: v for k, v in KW.items() if k != "init_steps"}
    with pytest.raises(ValueError, match=match):
        sf.sample(T1, method=method, **base, **kw)


def test_auto_training_follows_the_options_given():
    path = sf.Dilation(T1)  # auto picks the K-FAC flow on a dilation path with a fixed-step solver
    auto = SBTMConfig().resolved(path)
    assert (auto.training, auto.theta_flow, auto.solver.method, type(auto.eta).__name__) == ("flow", "kfac", "rkc", "TrackingEta")
    assert auto.eta.ratio == 10.0 and auto.eta is not SBTMConfig().resolved(path).eta  # a fresh schedule per run
    assert SBTMConfig(solver="dopri5").resolved(path).theta_flow == "gd"  # K-FAC refreshes on a fixed grid only
    flow = SBTMConfig(eta=2.0).resolved(path)
    assert flow.training == "flow" and flow.eta == 2.0 and flow.inner_steps is None
    steps = SBTMConfig(lr=1e-2).resolved(sf.as_path(T1))
    assert (steps.training, steps.lr, steps.inner_steps, steps.eta) == ("steps", 1e-2, 5, None)
    assert SBTMConfig().resolved(sf.as_path(T1)).training == "flow" and SBTMConfig().resolved(sf.as_path(T1)).theta_flow == "gd"


def test_stored_config_is_the_resolved_one_and_rebuilds_the_run():
    res = sf.sample(T1, **KW, seed=1)
    cfg = res.config
    assert cfg["training"] == "flow" and cfg["eta"] == 5.0
    assert cfg["inner_steps"] is None and cfg["rtol"] is None  # unused by this configuration
    plain = {k: v for k, v in cfg.items() if k != "init"}  # the init law is stored as its repr
    again = sf.sample(T1, init=KW["init"], **{k: tuple(v) if k == "hidden" else v for k, v in plain.items()})
    assert torch.equal(again.particles, res.particles)


def test_config_objects_validate_when_built():
    with pytest.raises(ValueError, match="checkpoint_every"):
        ULAConfig(checkpoint_every=0)
    with pytest.raises(ValueError, match="sde_solver"):
        ULAConfig(sde_solver="nope")
    with pytest.raises(ValueError, match="fixed-step solver"):
        SBTMConfig(training="steps", solver="dopri5")
    assert isinstance(build_config("ula", {"dt": 0.1}), ULAConfig)
    res = sf.sampling.run_sbtm(T1, SBTMConfig(**KW, training="steps", inner_steps=1))
    assert res.config["training"] == "steps" and res.info["train_steps"] == 2


def test_a_config_object_is_used_as_given_and_not_mixed_with_keywords():
    with pytest.raises(ValueError, match="either a config or keyword options"):
        sf.sampling.run_sbtm(T1, SBTMConfig(**KW), seed=3)
    with pytest.raises(ValueError, match="needs a ULAConfig"):
        build_config("ula", {}, SBTMConfig())


def test_nested_groups_and_flat_keywords_build_the_same_configuration():
    from sbtm_flows.config import DensityOptions, FlowTraining, ScoreOptions, SolverOptions, StepsTraining

    nested = SBTMConfig(solver=SolverOptions("dopri5", rtol=1e-4), training=FlowTraining(eta=10.0),
                        score=ScoreOptions(hidden=(8,), divergence="exact"), density=DensityOptions(holdout=4))
    flat = SBTMConfig(solver="dopri5", rtol=1e-4, training="flow", eta=10.0, hidden=(8,), divergence="exact", holdout=4)
    assert nested == flat and nested.training == "flow" and nested.steps is None
    assert (nested.solver.atol, nested.flow.eta, nested.score.activation) == (1e-6, 10.0, "silu")  # defaults filled
    assert flat.eta == 10.0 and flat.rtol == 1e-4 and flat.inner_steps is None  # flat names read from the groups
    assert SBTMConfig(**flat.fields()) == flat  # the flat form (config.json, result.config) rebuilds it
    mine = SolverOptions("dopri5")
    assert SBTMConfig(solver=mine, rtol=1e-3).solver.rtol == 1e-3 and mine.rtol is None  # a flat keyword overrides a copy
    steps = SBTMConfig(training=StepsTraining(inner_steps=2))
    assert (steps.training, steps.steps.lr, steps.solver.method, steps.flow) == ("steps", 1e-3, "heun2", None)


@pytest.mark.parametrize(
    ("kw", "err", "match"),
    [
        (lambda C: dict(training="steps", flow=C.FlowTraining(eta=2.0)), ValueError,
         r"eta=2.0 is not used by training='steps'; it is an option of training='flow'"),
        (lambda C: dict(training=C.FlowTraining(), steps=C.StepsTraining(lr=0.1)), ValueError, r"lr=0.1 is not used by training='flow'"),
        (lambda C: dict(solver=C.SolverOptions("heun2", atol=1e-3)), ValueError, r"atol=0.001 is not used by the fixed-step solver 'heun2'"),
        (lambda C: dict(score=C.ScoreOptions(model=torch.nn.Linear(1, 1), activation="tanh")), ValueError, "activation.*custom score_model"),
        (lambda C: dict(score=5), ValueError, "score must be a ScoreOptions, got int"),
        (lambda C: dict(solver=C.SolverOptions("nope")), ValueError, "unknown solver 'nope'"),
        (lambda C: dict(density=C.DensityOptions(holdout=-1)), ValueError, "holdout must be a non-negative integer"),
        (lambda C: dict(etta=1.0), TypeError, "unexpected keyword argument 'etta'"),
    ],
)
def test_nested_groups_refuse_unused_options_and_bad_values(kw, err, match):
    from sbtm_flows import config

    with pytest.raises(err, match=match):
        SBTMConfig(**kw(config))


def test_a_nested_configuration_runs_bitwise_like_the_flat_keywords():
    from sbtm_flows.config import FlowTraining, ScoreOptions, SolverOptions

    flat = sf.sample(T1, **KW, solver="heun2", eta=3.0, hidden=(8,), seed=2)
    nested = sf.sampling.run_sbtm(T1, SBTMConfig(**KW, solver=SolverOptions("heun2"), training=FlowTraining(eta=3.0),
                                                 score=ScoreOptions(hidden=(8,), init_steps=KW["init_steps"]), seed=2))
    assert torch.equal(flat.particles, nested.particles) and torch.equal(flat.thetas, nested.thetas)
    assert flat.config == nested.config
