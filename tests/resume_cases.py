"""One interrupted-and-resumed run, shared by the bitwise-resume tests of several modules."""

from __future__ import annotations

import pathlib

import pytest

import sbtm_flows as sf


def interrupt_and_resume(target, ck: pathlib.Path, checkpoint_every: int = 2, **kw):
    """``(full, resumed, k)``: an uninterrupted ``sf.sample(target, **kw)`` run, and the same run
    stopped by ``max_nfe`` at half its NFE (a :class:`~sbtm_flows.SamplingError` naming max_nfe,
    checkpointing to ``ck`` every ``checkpoint_every`` output times) and then resumed from ``ck``;
    k is the output index the interrupted run had checkpointed."""
    full = sf.sample(target, **kw)
    with pytest.raises(sf.SamplingError, match="max_nfe"):
        sf.sample(target, checkpoint=ck, checkpoint_every=checkpoint_every, max_nfe=full.nfe // 2, **kw)
    k = sf.checkpoint.read_checkpoint(ck)["k"]
    resumed = sf.sample(target, checkpoint=ck, checkpoint_every=checkpoint_every, resume=True, **kw)
    return full, resumed, k
