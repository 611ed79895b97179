"""Result groups its held-out fields (result.holdout) while the flat names stay, so files saved by
every version load."""

import torch

import sbtm_flows as sf


def test_held_out_fields_are_grouped_and_survive_save_and_load(tmp_path):
    x = torch.arange(6.0).reshape(3, 2)
    res = sf.Result(particles=x, times=torch.tensor([0.0]), trajectory=x[None], holdout_particles=x[:2] + 10,
                    holdout_trajectory=(x[:2] + 10)[None], holdout_lost=torch.tensor([False, True]))
    h = res.holdout
    assert torch.equal(h.particles, x[:2] + 10) and h.lost.tolist() == [False, True] and h.log_density is None
    res.save(tmp_path / "r.pt")
    back = sf.load(tmp_path / "r.pt")
    assert torch.equal(back.holdout.trajectory, res.holdout_trajectory)
    assert sf.Result(particles=x, times=torch.tensor([0.0]), trajectory=x[None]).holdout is None
