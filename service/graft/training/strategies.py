"""What trains under each strategy, at which learning rate, and in which mode.

| strategy            | trains                           | optimizer groups          |
|---------------------|----------------------------------|---------------------------|
| full fine-tune      | head + every stage               | head @ head lr, base @ base lr |
| partial fine-tune   | head + top `trainable_stages`    | head @ head lr, base @ base lr |
| feature extraction  | head only; body a fixed function | head @ head lr            |

Frozen parameters get `requires_grad=False`: autograd computes no gradient for them and
AdamW skips any parameter without a gradient, so they stay bit-identical (no weight decay
either). Frozen stages are also put in eval mode (see `set_train_mode`).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from graft.backbones.spec import GraftModel
from graft.domain import Strategy, TrainingPlan

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def trained_stage_count(model: GraftModel, plan: TrainingPlan) -> int:
    """How many of the body's stages (counted from the top) train once any warm-up is over."""
    n = len(model.spec.stages)
    if plan.strategy == Strategy.FULL_FINE_TUNE:
        return n
    if plan.strategy == Strategy.FEATURE_EXTRACTION:
        return 0
    return max(0, min(plan.trainable_stages, n))


def frozen_stage_indices(
    model: GraftModel, plan: TrainingPlan, *, head_warmup: bool = False
) -> list[int]:
    """Indices (input side first) of the stages that do not train now."""
    n = len(model.spec.stages)
    trained = 0 if head_warmup else trained_stage_count(model, plan)
    return list(range(n - trained))


def _split_body_params(
    model: GraftModel, plan: TrainingPlan, *, head_warmup: bool
) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """The body's parameters as (trainable now, frozen now), in module registration order.

    Parameters of the body that belong to no stage (the spec says there are none, but a
    wrapper could add some) follow the top stage.
    """
    frozen_idx = set(frozen_stage_indices(model, plan, head_warmup=head_warmup))
    stages = model.stage_modules()
    stage_of: dict[int, int] = {}
    for i, modules in enumerate(stages):
        for m in modules:
            for p in m.parameters():
                stage_of.setdefault(id(p), i)
    top = len(stages) - 1
    trainable: list[nn.Parameter] = []
    frozen: list[nn.Parameter] = []
    for p in model.body.parameters():
        (frozen if stage_of.get(id(p), top) in frozen_idx else trainable).append(p)
    return trainable, frozen


def set_trainable(model: GraftModel, plan: TrainingPlan, *, head_warmup: bool = False) -> None:
    """Set `requires_grad` for the strategy; during a head warm-up the whole body is frozen."""
    trainable, frozen = _split_body_params(model, plan, head_warmup=head_warmup)
    for p in trainable:
        p.requires_grad_(True)
    for p in frozen:
        p.requires_grad_(False)
    for p in model.head.parameters():
        p.requires_grad_(True)


def _decay_split(
    module: nn.Module, params: list[nn.Parameter]
) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Split into (decayed, not decayed): biases and normalisation scales/shifts take no
    weight decay (decaying a BatchNorm gain towards zero only shrinks the features)."""
    wanted = {id(p) for p in params}
    no_decay: set[int] = set()
    for m in module.modules():
        for name, p in m.named_parameters(recurse=False):
            if id(p) in wanted and (isinstance(m, _NORM_TYPES) or name == "bias" or p.ndim <= 1):
                no_decay.add(id(p))
    return [p for p in params if id(p) not in no_decay], [p for p in params if id(p) in no_decay]


def param_groups(model: GraftModel, plan: TrainingPlan) -> list[dict[str, Any]]:
    """AdamW parameter groups of the strategy (nothing is frozen or changed here).

    Groups, in this order and only when non-empty: `head` and `head_no_decay` at the head's
    learning rate, `base` and `base_no_decay` at the base's. The first group is always the
    head's (its rate is the one progress events report). The base groups hold every base
    parameter that trains after any head warm-up; during the warm-up they have no gradient
    and AdamW leaves them alone.
    """
    base_params, _ = _split_body_params(model, plan, head_warmup=False)
    head_params = list(model.head.parameters())

    groups: list[dict[str, Any]] = []
    for name, module, params, lr in (
        ("head", model.head, head_params, plan.head_learning_rate),
        ("base", model.body, base_params, plan.base_learning_rate),
    ):
        decay, no_decay = _decay_split(module, params)
        if decay:
            groups.append(
                {"name": name, "params": decay, "lr": lr, "weight_decay": plan.weight_decay}
            )
        if no_decay:
            groups.append(
                {"name": f"{name}_no_decay", "params": no_decay, "lr": lr, "weight_decay": 0.0}
            )
    return groups


def apply_strategy(model: GraftModel, plan: TrainingPlan) -> list[dict[str, Any]]:
    """Freeze what the strategy freezes (`set_trainable`) and return its AdamW parameter
    groups (`param_groups`)."""
    set_trainable(model, plan, head_warmup=False)
    return param_groups(model, plan)


def set_train_mode(
    model: GraftModel,
    plan: TrainingPlan,
    *,
    head_warmup: bool = False,
    update_bn_statistics: bool = False,
) -> None:
    """`model.train()`, except that frozen stages stay in eval mode, and so do the
    BatchNorm layers of trained stages unless `update_bn_statistics`.

    Frozen stages: a BatchNorm layer in train mode normalises with the batch's statistics
    and updates its running mean/variance even when its weights are frozen. The layers
    above it were pretrained against the ImageNet running statistics; letting small,
    differently distributed batches overwrite them silently changes the "frozen" features
    (and a frozen stage would compute something different at train and at eval time).
    Dropout / drop-path in a frozen stage would only add noise to features nothing there
    learns from, so the whole stage goes to eval mode, not just its BatchNorms.

    Trained stages: their BatchNorm scale and shift train like any weight, but the running
    statistics stay the pretrained ones by default (Keras' fine-tuning guide gives the same
    rule). Measured on Fashion-MNIST 60/class (docs/TRAINING.md): with statistics updated
    from the few dozen batches of a small dataset, partial fine-tuning reached 57.5% instead
    of 70.0% and full fine-tuning fell from 64% after the head warm-up to 46%, because the
    running averages used at evaluation never match the batch statistics the weights were
    trained against. A randomly initialised model has no statistics worth keeping: the loop
    passes `update_bn_statistics=True` for it.

    Under feature extraction the body is one fixed function, so all of it is in eval mode
    (its features are computed once and cached).
    """
    model.train()
    if plan.strategy == Strategy.FEATURE_EXTRACTION:
        model.body.eval()
        return
    stages = model.stage_modules()
    frozen = set(frozen_stage_indices(model, plan, head_warmup=head_warmup))
    for i, modules in enumerate(stages):
        for m in modules:
            if i in frozen:
                m.eval()
            elif not update_bn_statistics:
                for sub in m.modules():
                    if isinstance(sub, nn.modules.batchnorm._BatchNorm):
                        sub.eval()
