"""How Advise times a candidate network (graft.advisor.timing): the features pass's own
batches count, the warm-up and partial batches do not, and separate batches run only when
the pass had too few."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from torch import nn

from graft.advisor import timing
from graft.advisor.timing import TIMING_BATCHES, StageTimer, time_inference
from graft.backbones import build_imagenet_architecture, get_spec
from graft.backbones.spec import PretrainedSpec


@pytest.fixture(scope="module")
def net_and_spec() -> tuple[nn.Module, PretrainedSpec]:
    torch.manual_seed(0)
    spec = get_spec("efficientnet_lite0")
    return build_imagenet_architecture(spec).eval(), spec  # random weights: timing only


def test_the_warm_up_and_partial_batches_do_not_count(
    net_and_spec: tuple[nn.Module, PretrainedSpec],
) -> None:
    net, spec = net_and_spec
    cpu = torch.device("cpu")
    x = torch.randn(4, 3, 32, 32)
    timer = StageTimer(net, spec, cpu, batch_size=4)
    with torch.no_grad(), timer:
        for batch in (x, x, x[:3], x, x):  # warm-up, 3 full batches, one partial
            with timer.batch(len(batch)):
                net(batch)
    assert timer.timed == 3
    ips, fractions, measured = timer.result(spec)
    assert measured and ips > 0
    assert len(fractions) == len(spec.stages) and sum(fractions) == pytest.approx(1.0)
    # Enough batches already: time_inference adds none.
    calls = []
    handle = net.register_forward_pre_hook(lambda m, i: calls.append(1))
    try:
        again = time_inference(
            net, spec, [Image.new("RGB", (32, 32))], lambda im: x[0], 4, cpu, timer=timer
        )
    finally:
        handle.remove()
    assert again == (ips, fractions, True) and not calls


def test_too_few_batches_in_the_pass_are_topped_up(
    net_and_spec: tuple[nn.Module, PretrainedSpec], monkeypatch: pytest.MonkeyPatch
) -> None:
    net, spec = net_and_spec
    cpu = torch.device("cpu")
    monkeypatch.setattr(timing, "TIMING_MIN_SECONDS", 0.0)
    x = torch.randn(4, 3, 32, 32)
    timer = StageTimer(net, spec, cpu, batch_size=4)
    with torch.no_grad(), timer:
        for batch in (x, x):  # warm-up and one timed
            with timer.batch(len(batch)):
                net(batch)
    assert timer.timed == 1
    with torch.no_grad():
        ips, _, measured = time_inference(
            net, spec, [Image.new("RGB", (32, 32))], lambda im: x[0], 4, cpu, timer=timer
        )
    assert timer.timed == TIMING_BATCHES and measured and ips > 0
