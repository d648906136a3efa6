"""`graft predict`: classify image files."""

from __future__ import annotations

import json
from typing import Any

import graft_client
from graft.cli.context import EXIT_JOB_NOT_SUCCEEDED, EXIT_OK, Context
from graft.cli.render import fmt_model_ref
from graft_client import pb


def cmd_predict(ctx: Context) -> int:
    a = ctx.args
    try:
        ref = graft_client.parse_model_ref(a.model)
    except ValueError as e:
        ctx.parser.error(str(e))
    failures = 0
    names: list[str] = []
    images: list[bytes] = []
    lines: list[tuple[str, str]] = []
    results: list[dict[str, Any]] = []
    for path in a.files:
        try:
            images.append(path.read_bytes())
            names.append(str(path))
        except OSError as e:
            failures += 1
            lines.append((str(path), f"error: cannot read: {e.strerror or e}"))
            results.append({"file": str(path), "error": f"cannot read: {e.strerror or e}"})
    answered: pb.ModelRef | None = None
    with ctx.client() as client:
        for start in range(0, len(images), a.batch_size):
            response = client.predict(ref, images[start : start + a.batch_size], top_k=a.top_k)
            if answered is None:
                # Later batches use the version that answered the first, even if an alias
                # moves meanwhile.
                answered = pb.ModelRef(name=response.model.name, version=response.model.version)
                ref = answered
            for name, prediction in zip(
                names[start : start + a.batch_size], response.predictions, strict=False
            ):
                if prediction.HasField("error") and not prediction.classes:
                    failures += 1
                    lines.append(
                        (
                            name,
                            f"error: {_code_name(prediction.error.code)}: "
                            f"{prediction.error.message}",
                        )
                    )
                    results.append({"file": name, "error": prediction.error.message})
                else:
                    lines.append(
                        (name, "  ".join(f"{c.label} {c.score:.3f}" for c in prediction.classes))
                    )
                    results.append(
                        {
                            "file": name,
                            "classes": [
                                {"label": c.label, "score": round(c.score, 6)}
                                for c in prediction.classes
                            ],
                        }
                    )
    if a.json:
        model = fmt_model_ref(answered) if answered else a.model
        print(json.dumps({"model": model, "predictions": results}, indent=2), file=ctx.out)
    else:
        if answered is not None:
            print(f"model {fmt_model_ref(answered)}", file=ctx.out)
        width = max(len(n) for n, _ in lines) if lines else 0
        for name, text in lines:
            print(f"{name.ljust(width)}  {text}", file=ctx.out)
    return EXIT_JOB_NOT_SUCCEEDED if failures else EXIT_OK


def _code_name(code: int) -> str:
    from google.rpc import code_pb2

    try:
        return code_pb2.Code.Name(code)
    except ValueError:
        return str(code)
