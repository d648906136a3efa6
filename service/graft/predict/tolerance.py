"""How far a runtime's answers may be from eager's and still be served (docs/PREDICT.md)."""

from __future__ import annotations

import torch

# Largest difference in any class probability allowed between a runtime and eager. Measured
# differences are ~1e-6 (float32 reassociation: folded BatchNorm, fused kernels).
PROB_TOLERANCE = 1e-4
# The same for reduced-precision autocast, by type: float16 keeps 11 bits of mantissa,
# bfloat16 8 (it moved the ImageNet classifier's probabilities on the test photos by 1.4e-2
# on CPU). Served only where top-1 is the same (wherever eager's own top two are further
# apart than this) and no probability moves by more than this.
REDUCED_PROB_TOLERANCE = {torch.float16: 1e-2, torch.bfloat16: 5e-2}
