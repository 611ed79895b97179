"""compare_laws against a law averages several draws; the energy-distance noise floor formula
(issue 12, item 9)."""

import math

import torch

import sbtm_flows as sf
from sbtm_flows.metrics import energy_distance


def test_energy_distance_between_two_samples_of_one_law_has_mean_e_abs_diff_times_1_over_n_plus_1_over_m():
    # N(0, 1) in 1-D: E|X − X'| = 2/√π; the V-statistic's mean is E|X − X'|·(1/n + 1/m) exactly
    n, m, reps = 20, 30, 3000
    g = torch.Generator().manual_seed(0)
    vals = torch.tensor([energy_distance(torch.randn(n, 1, generator=g, dtype=torch.float64),
                                         torch.randn(m, 1, generator=g, dtype=torch.float64)) for _ in range(reps)])
    expected = 2 / math.sqrt(math.pi) * (1 / n + 1 / m)
    se = float(vals.std()) / math.sqrt(reps)
    assert abs(float(vals.mean()) - expected) < 4 * se, (float(vals.mean()), expected, se)
    assert abs(float(vals.mean()) - expected / 2) > 20 * se  # the old docstring's half is far off


def test_compare_laws_against_a_law_averages_draws_so_its_ratio_is_stable():
    law = sf.Gaussian(torch.zeros(2), torch.eye(2))
    x = law.sample(400, generator=torch.Generator().manual_seed(1)).float()

    def ratios(draws):
        return torch.tensor([float(sf.compare_laws(x, law, floor_reps=16, draws=draws, seed=s).ratio[0]) for s in range(8)])

    one, many = ratios(1), ratios(16)
    assert float(many.std()) < 0.5 * float(one.std()), (one, many)  # ≈ 1/4 expected (√16), floor noise included
    cmp = sf.compare_laws(x, law, floor_reps=16, draws=16, seed=0)
    assert 0 < float(cmp.distance_sd[0]) < float(cmp.distance[0]) and 0 < float(cmp.floor_sd[0]) < float(cmp.floor[0])
    assert float(sf.compare_laws(x, x.clone() + 0.0).distance_sd[0]) == 0.0  # particles: nothing to redraw
