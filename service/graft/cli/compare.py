"""`graft models compare NAME V1 V2`: two versions of a model on the same held-out images
(docs/COMPARE.md). V1 is the baseline, V2 the candidate; each a version number or an
alias. Exits 0 whenever the comparison was made, worse or not: `graft models alias
--guard` is the gate that refuses."""

from __future__ import annotations

from graft.cli.context import EXIT_OK, Context
from graft.cli.render import print_json, print_table
from graft_client import pb


def version_ref(name: str, word: str) -> pb.ModelRef:
    """A version of `name` as given on the command line: a number, or an alias."""
    word = word.strip().removeprefix("@")
    if word.isdigit():
        return pb.ModelRef(name=name, version=int(word))
    return pb.ModelRef(name=name, alias=word)


def cmd_compare(ctx: Context) -> int:
    a = ctx.args
    baseline, candidate = version_ref(a.name, a.baseline), version_ref(a.name, a.candidate)
    with ctx.client() as client:
        response = client.compare_models(baseline, candidate)
    if a.json:
        print_json(response, ctx.out)
    else:
        print_comparison(response, ctx)
    return EXIT_OK


def _verdict(d: pb.MetricDelta) -> str:
    if d.delta == 0:
        return "same"
    return "better" if (d.delta > 0) == d.higher_is_better else "worse"


def print_comparison(r: pb.CompareModelsResponse, ctx: Context) -> None:
    b, c = r.baseline, r.candidate
    print(
        f"{c.name}: version {c.version} (candidate) against version {b.version} "
        f"(baseline) on {r.images} held-out images",
        file=ctx.out,
    )
    rows = [
        [d.metric, f"{d.baseline:.4f}", f"{d.candidate:.4f}", f"{d.delta:+.4f}", _verdict(d)]
        for d in r.deltas
    ]
    header = ["METRIC", f"V{b.version}", f"V{c.version}", "DELTA", ""]
    print_table(rows, header, ctx.out)
    verdict = "yes" if r.candidate_not_worse else "NO: it classifies fewer images right"
    print(f"candidate not worse: {verdict}", file=ctx.out)
    print(f"split: {r.split}", file=ctx.out)
