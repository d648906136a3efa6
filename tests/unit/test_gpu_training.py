"""The CUDA training path: bf16 autocast steps agree with fp32 CPU steps.

Needs CUDA; on a machine without it (this project's CI) the test is skipped, which makes it
a missing test there. It ran on a lent H200 (docs/PREDICT.md, "On a GPU").
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from graft import backbones as bb
from graft.training.engine import evaluate, train_step

pytestmark = pytest.mark.gpu


def _steps(
    model: nn.Module, device: torch.device, inputs: torch.Tensor, targets: torch.Tensor
) -> list[float]:
    model = model.to(device, memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scheduler = LambdaLR(optimizer, lambda _: 1.0)
    losses = []
    for _ in range(5):
        loss, _lr = train_step(
            model,
            inputs,
            targets,
            optimizer=optimizer,
            scheduler=scheduler,
            loss_fn=nn.CrossEntropyLoss(),
            device=device,
        )
        losses.append(float(loss))
    return losses


def test_bf16_cuda_steps_follow_fp32_cpu_steps() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    torch.manual_seed(0)
    model = bb.create_model("efficientnet_lite0", 4, pretrained=False)
    inputs = torch.randn(16, 3, 64, 64)
    targets = torch.arange(16) % 4
    on_cpu = _steps(copy.deepcopy(model), torch.device("cpu"), inputs, targets)
    on_gpu = _steps(copy.deepcopy(model), torch.device("cuda"), inputs, targets)
    print(f"losses cpu fp32 {on_cpu}\nlosses cuda bf16 {on_gpu}")
    # bf16 keeps 8 bits of mantissa: the first loss agrees to about 1%, later ones drift a
    # little as the updates differ; both runs must learn the same batch.
    assert abs(on_gpu[0] - on_cpu[0]) <= 0.02 * on_cpu[0]
    assert max(abs(g - c) for g, c in zip(on_gpu, on_cpu, strict=True)) <= 0.1 * on_cpu[0]
    assert on_gpu[-1] < on_gpu[0] and on_cpu[-1] < on_cpu[0]


def test_evaluate_on_cuda_matches_cpu() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    torch.manual_seed(1)
    model = bb.create_model("efficientnet_lite0", 3, pretrained=False).eval()
    batches = [(torch.randn(8, 3, 32, 32), torch.arange(8) % 3) for _ in range(3)]
    labels = ["a", "b", "c"]
    cpu = evaluate(copy.deepcopy(model), batches, labels=labels, device=torch.device("cpu"))
    gpu = evaluate(
        copy.deepcopy(model).to("cuda"), batches, labels=labels, device=torch.device("cuda")
    )
    print(f"cpu loss {cpu.loss:.5f} acc {cpu.accuracy:.3f}")
    print(f"cuda loss {gpu.loss:.5f} acc {gpu.accuracy:.3f}")
    assert sum(cpu.confusion) == sum(gpu.confusion) == 24
    assert abs(gpu.loss - cpu.loss) <= 0.02 * cpu.loss
    assert abs(gpu.accuracy - cpu.accuracy) <= 2 / 24  # bf16 may flip a near tie or two
