"""The `graft` command line: argument parsing, and each client command run through
`main([...])` against the scripted server double of test_client.py over real gRPC."""

from __future__ import annotations

import _thread
import io
import json
import signal
import sys
import threading
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from graft import cli
from graft import errors as domain_errors
from graft.config import Config
from graft_client import pb
from tests.unit.test_client import FakeGraft, make_events, serve_fake


@pytest.fixture
def fake() -> FakeGraft:
    return FakeGraft()


@pytest.fixture
def target(fake: FakeGraft, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    with serve_fake(fake) as (_, address):
        monkeypatch.setenv("GRAFT_TARGET", address)  # read when the parser is built
        yield address


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.out, captured.err


# -- parsing and the local commands --------------------------------------------------------


def fake_module(monkeypatch: pytest.MonkeyPatch, name: str, **attrs: Any) -> None:
    module = types.ModuleType(name)
    for key, value in attrs.items():
        setattr(module, key, value)
    monkeypatch.setitem(sys.modules, name, module)


def test_serve_builds_the_config_from_flags_over_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen: list[Config] = []

    def run_server(config: Config) -> int:
        seen.append(config)
        return 7

    fake_module(monkeypatch, "graft.server", run_server=run_server)
    monkeypatch.setenv("GRAFT_DEVICE", "cpu")
    monkeypatch.setenv("GRAFT_LEASE_SECONDS", "12")
    argv = ["serve", "--port", "6000", "--metrics-port", "0", "--data-dir", str(tmp_path)]
    argv += ["--data-root", str(tmp_path / "a"), "--data-root", "rel", "--no-worker"]
    argv += ["--device", "cuda:1"]
    assert cli.main(argv) == 7
    config = seen[0]
    assert (config.port, config.metrics_port, config.host) == (6000, 0, "127.0.0.1")
    assert config.data_dir == tmp_path.resolve()
    assert config.data_roots == (tmp_path / "a", Path("rel").resolve())
    assert config.embedded_worker is False
    assert config.device == "cuda:1"  # the flag beats GRAFT_DEVICE
    assert config.lease_seconds == 12.0  # no flag: the environment's value

    seen.clear()
    assert cli.main(["serve"]) == 7
    assert seen[0].embedded_worker is True and seen[0].port == 50051


def test_worker_passes_its_id(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: list[tuple[Config, str | None]] = []

    def run_worker(config: Config, worker_id: str | None) -> int:
        seen.append((config, worker_id))
        return 0

    fake_module(monkeypatch, "graft.worker", run_worker=run_worker)
    argv = ["worker", "--data-dir", str(tmp_path), "--worker-id", "gpu0", "--metrics-port", "9999"]
    assert cli.main(argv) == 0
    config, worker_id = seen[0]
    assert worker_id == "gpu0" and config.worker_metrics_port == 9999
    assert config.data_dir == tmp_path.resolve()


def test_backbones_import_is_local(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[tuple[str, Path, Path]] = []

    def import_weights(name: str, file: Path, weights_dir: Path) -> Path:
        calls.append((name, file, weights_dir))
        if name == "bad":
            raise domain_errors.InvalidArgument.of("file", "sha256 does not match")
        return weights_dir / "w.pth"

    fake_module(monkeypatch, "graft.backbones", import_weights=import_weights)
    argv = ["backbones", "import", "resnet50", "w.pth", "--data-dir", str(tmp_path)]
    code, out, _ = run(capsys, *argv)
    assert code == 0
    assert calls == [("resnet50", Path("w.pth"), tmp_path / "weights")]
    assert "imported resnet50" in out

    argv = ["backbones", "import", "bad", "w.pth", "--data-dir", str(tmp_path)]
    code, _, err = run(capsys, *argv)
    assert code == 2
    # The one violation is the message itself: not printed twice.
    assert err == "error: INVALID_ARGUMENT: file: sha256 does not match\n"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["advise", "/d"], {"uri": "/d", "json": False, "backbones": []}),
        (["advise", "--dataset-id", "ds", "--json"], {"dataset_id": "ds", "json": True}),
        (
            ["train", "m", "/d", "--strategy", "partial", "--epochs", "3", "--follow"],
            {"model_name": "m", "strategy": "partial", "epochs": 3, "follow": True},
        ),
        (["predict", "m:2", "a.png", "b.png", "--top-k", "3"], {"model": "m:2", "top_k": 3}),
        (["jobs"], {"words": [], "state": None}),
        (["jobs", "cancel", "j1"], {"words": ["cancel", "j1"]}),
        (["cancel", "j1"], {"job_id": "j1"}),
        (["models", "alias", "m", "prod", "2"], {"words": ["alias", "m", "prod", "2"]}),
        (["backbones"], {"words": []}),
        (["upload", "x.zip"], {"archive": Path("x.zip")}),
        (["jobs", "--target", "h:1", "--timeout", "5"], {"target": "h:1", "timeout": 5.0}),
    ],
)
def test_parse(argv: list[str], expected: dict[str, Any]) -> None:
    args = cli.build_parser().parse_args(argv)
    for key, value in expected.items():
        assert getattr(args, key) == value, key


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "train", "m")[0] == 2  # no dataset
    assert run(capsys, "train", "m", "/d", "--dataset-id", "x")[0] == 2  # both
    assert run(capsys, "train", "m", "/d", "--strategy", "half")[0] == 2
    assert run(capsys, "train", "m", "/d", "--epochs", "0")[0] == 2
    assert run(capsys, "jobs", "cancel")[0] == 2
    assert run(capsys, "predict", "a:b:c", "x.png")[0] == 2
    assert run(capsys, "models", "alias", "m", "prod", "two")[0] == 2
    assert run(capsys)[0] == 2
    assert run(capsys, "--help")[0] == 0


def test_default_target_comes_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRAFT_TARGET", raising=False)
    assert cli.build_parser().parse_args(["jobs"]).target == "localhost:50051"
    monkeypatch.setenv("GRAFT_TARGET", "graft.internal:443")
    assert cli.build_parser().parse_args(["jobs"]).target == "graft.internal:443"


# -- client commands against the server double ---------------------------------------------


def test_advise_prints_the_advice(target: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "advise", "/data/flowers", "--backbone", "efficientnet_lite0")
    assert code == 0
    assert "quadrant    4 small & similar" in out
    assert "strategy    3 feature extraction" in out
    assert "similarity  0.81" in out
    assert "160 images in 2 classes" in out
    assert "efficientnet_lite0, 3 feature extraction, 5 epochs, batch 32, 224 px" in out
    assert "80 images per class is small" in out

    assert "median 240x180 px" in out  # a report without sizes or modes
    assert "duplicates" not in out  # nor duplicates

    code, out, _ = run(capsys, "advise", "/data/flowers", "--json")
    assert json.loads(out)["quadrant"] == "QUADRANT_SMALL_SIMILAR"


class MeasuredReportFake(FakeGraft):
    """Advise answers with a report that found duplicates, sizes and modes."""

    def Advise(self, request: pb.AdviseRequest, context: Any) -> pb.AdviseResponse:
        response = super().Advise(request, context)
        response.report.MergeFrom(
            pb.DatasetReport(
                skipped_files=1,
                duplicate_images=5,
                duplicate_groups=4,
                cross_split_duplicates=1,
                conflicting_label_duplicates=2,
                min_width=5,
                max_width=640,
                min_height=180,
                max_height=180,
                modes={"L": 10, "RGB": 150, "P": 10},
            )
        )
        return response


def test_advise_prints_duplicates_sizes_and_modes(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with serve_fake(MeasuredReportFake()) as (_, address):
        monkeypatch.setenv("GRAFT_TARGET", address)
        code, out, _ = run(capsys, "advise", "/data/flowers")
        assert code == 0
        lines = out.splitlines()
        start = next(i for i, line in enumerate(lines) if line.startswith("dataset"))
        assert lines[start : start + 3] == [
            "dataset     160 images in 2 classes (small below 1000/class), imbalance 1.0,"
            " 1 file skipped",
            "            sizes 5-640 x 180 px (median 240x180), modes RGB 150, L 10, P 10",
            "duplicates  5 extra copies in 4 groups of identical files: 1 across the"
            " train/validation split, 2 with conflicting labels",
        ]

        code, out, _ = run(capsys, "advise", "/data/flowers", "--json")
        report = json.loads(out)["report"]
        assert (report["duplicate_images"], report["cross_split_duplicates"]) == (5, 1)
        assert report["modes"] == {"L": 10, "RGB": 150, "P": 10}
        assert (report["min_width"], report["max_height"]) == (5, 180)


def test_relative_dataset_paths_that_exist_here_are_sent_absolute(
    fake: FakeGraft,
    target: str,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "flowers").mkdir()
    monkeypatch.chdir(tmp_path)
    assert run(capsys, "advise", "flowers")[0] == 0
    assert fake.advise_requests[-1].dataset.uri == str(tmp_path / "flowers")
    assert run(capsys, "advise", "elsewhere/set")[0] == 0
    assert fake.advise_requests[-1].dataset.uri == "elsewhere/set"


def test_rpc_errors_print_code_message_and_violations(
    target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "advise", "/forbidden/x")
    assert code == 2 and out == ""
    assert err.splitlines() == [
        "error: INVALID_ARGUMENT: dataset.uri is outside the data roots",
        "  dataset.uri: must be inside one of: /data",
    ]
    code, _, err = run(capsys, "jobs", "nope")
    assert (code, err) == (2, "error: NOT_FOUND: no job nope\n")


def test_unreachable_server(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "jobs", "--target", "127.0.0.1:1", "--timeout", "3")
    assert code == 2
    assert err.startswith("error: UNAVAILABLE: ")
    assert "is a Graft server running at 127.0.0.1:1?" in err


def test_train_without_follow(
    fake: FakeGraft, target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "train", "flowers", "/data/flowers")
    assert code == 0
    assert "job       job-1" in out and "state     QUEUED" in out
    request = fake.start_requests[-1]
    assert not request.HasField("plan")  # no flags: the server advises
    assert request.request_id

    argv = ["train", "flowers", "--dataset-id", "ds-1", "--strategy", "partial"]
    argv += ["--trainable-stages", "2", "--epochs", "4", "--image-size", "64", "--request-id", "r1"]
    assert run(capsys, *argv)[0] == 0
    request = fake.start_requests[-1]
    assert request.dataset.dataset_id == "ds-1" and request.request_id == "r1"
    assert request.plan == pb.TrainingPlan(
        strategy=pb.STRATEGY_PARTIAL_FINE_TUNE, trainable_stages=2, epochs=4, image_size=64
    )


def test_train_follow_shows_progress_and_succeeds(
    fake: FakeGraft, target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "train", "flowers", "/data/flowers", "--epochs", "2", "--follow")
    assert code == 0
    lines = err.splitlines()
    assert lines[0].startswith("job job-1 QUEUED: model flowers")
    assert "job job-1: RUNNING" in lines
    # Not a terminal: one step line (then throttled), one evaluation line per epoch.
    steps = [line for line in lines if line.startswith("epoch 1/2 [")]
    assert steps == [
        "epoch 1/2 [####--------------------]  17% step 1/3  loss 1.0000  250 img/s  ETA 1m05s"
    ]
    assert "epoch 1/2 evaluated: accuracy 70.0%  top-5 0.0%  macro-F1 0.000  loss 0.3000" in lines
    assert any(line.startswith("epoch 2/2 evaluated: accuracy 90.0%") for line in lines)
    assert "job job-1: SUCCEEDED" in lines
    assert out.startswith("SUCCEEDED: registered flowers:3  accuracy 90.0%")


def test_train_follow_exits_nonzero_when_the_job_fails(
    fake: FakeGraft, target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.final_state = pb.JOB_STATE_FAILED
    fake.final_error = "CUDA out of memory"
    code, out, _ = run(capsys, "train", "flowers", "/data/flowers", "--follow")
    assert code == 1
    assert out == "FAILED: job job-1: CUDA out of memory\n"


def test_train_follow_json_prints_events_then_the_job(
    fake: FakeGraft, target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "train", "flowers", "/data/flowers", "--follow", "--json")
    assert code == 0
    first_lines = out.splitlines()[: len(make_events("x"))]
    assert [json.loads(line)["sequence"] for line in first_lines] == [
        str(i)
        for i in range(1, len(first_lines) + 1)  # int64 is a string in proto JSON
    ]
    final = json.loads(out[out.index("{\n") :])
    assert final["state"] == "JOB_STATE_SUCCEEDED"


def test_ctrl_c_while_following_stops_following_only(
    fake: FakeGraft, target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.block_after = 3  # the job runs on and on

    def interrupt_once_following() -> None:
        # Ctrl-C while the CLI waits on the stream, not earlier (a loaded machine can take
        # longer than any fixed delay to get there).
        if fake.blocking.wait(60):
            _thread.interrupt_main()

    # Python's own Ctrl-C handler, as in a terminal: a shell that starts the tests in the
    # background without job control leaves SIGINT ignored, and interrupt_main then does
    # nothing.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    interrupter = threading.Thread(target=interrupt_once_following, daemon=True)
    interrupter.start()
    try:
        code, _, err = run(capsys, "train", "flowers", "/data/flowers", "--follow")
    finally:
        signal.signal(signal.SIGINT, previous)
    interrupter.join(5)
    assert code == 130
    assert "stopped following; job job-1 keeps running" in err
    assert fake.cancelled == []  # the job was not cancelled


def test_plan_summary_names_the_feature_cut() -> None:
    def fx(*stages: int) -> pb.TrainingPlan:
        return pb.TrainingPlan(
            backbone="efficientnet_lite0",
            strategy=pb.STRATEGY_FEATURE_EXTRACTION,
            feature_stages=list(stages),
        )

    assert "(stage 6 features)" in cli.describe_plan(fx(6))
    assert "(stages 6+7 features)" in cli.describe_plan(fx(6, 7))
    assert "features)" not in cli.describe_plan(fx())  # the last stage, as the classic cut
    gridded = fx(4, 5, 6)
    gridded.feature_grid = 2
    assert "(stages 4+5+6 features, 2x2 grid)" in cli.describe_plan(gridded)


def test_progress_bar_on_a_terminal_redraws_in_place() -> None:
    stream = io.StringIO()
    printer = cli.ProgressPrinter(stream, tty=True)
    for event in make_events("j", epochs=1, steps=2):
        printer(event)
    printer.finish()
    text = stream.getvalue()
    assert "\repoch 1/1 [############------------]  50% step 1/2" in text
    assert "\repoch 1/1 [########################] 100% step 2/2" in text
    assert "\r\x1b[Kepoch 1/1 evaluated: accuracy 70.0%" in text  # the bar line is cleared


def test_an_evaluation_line_shows_the_training_accuracy_when_measured() -> None:
    stream = io.StringIO()
    printer = cli.ProgressPrinter(stream, tty=False)
    metrics = pb.EvaluationMetrics(accuracy=0.7, loss=0.3)
    for train_accuracy in (0.0, 0.825):  # 0: a release that did not measure it
        printer(
            pb.ProgressEvent(
                kind=pb.EVENT_KIND_EVALUATION,
                epoch=1,
                total_epochs=1,
                metrics=metrics,
                train_accuracy=train_accuracy,
            )
        )
    first, second = stream.getvalue().splitlines()
    assert first.endswith("loss 0.3000") and "training" not in first
    assert second.endswith("loss 0.3000  (training accuracy 82.5%)")


def test_predict_prints_one_line_per_file(
    fake: FakeGraft, target: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    files = []
    for i in range(3):
        path = tmp_path / f"img{i}.png"
        Image.new("RGB", (10 + i, 5)).save(path)
        files.append(str(path))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"nope")
    argv = ["predict", "flowers@production", *files, str(broken), "--top-k", "2"]
    code, out, _ = run(capsys, *argv, "--batch-size", "2")
    assert code == 1  # one image failed
    lines = out.splitlines()
    assert lines[0] == "model flowers:2"
    assert lines[1].endswith("10x5:RGB 0.750  other 0.250")
    assert lines[3].startswith(files[2]) and "12x5:RGB 0.750" in lines[3]
    assert lines[4].startswith(str(broken)) and "error: INVALID_ARGUMENT" in lines[4]
    # Two requests; the second pinned to the version that answered the first.
    refs = [r.model for r in fake.predict_requests]
    assert refs == [
        pb.ModelRef(name="flowers", alias="production"),
        pb.ModelRef(name="flowers", version=2),
    ]

    code, out, _ = run(capsys, "predict", "flowers:1", files[0], "--json")
    assert code == 0
    assert json.loads(out)["model"] == "flowers:1"
    code, out, _ = run(capsys, "predict", "flowers", str(tmp_path / "missing.png"), files[0])
    assert code == 1 and "error: cannot read" in out


def test_jobs_list_show_and_cancel(
    fake: FakeGraft, target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.add_job("job-a")
    done = fake.add_job("job-b")
    done.state = pb.JOB_STATE_SUCCEEDED
    done.model.CopyFrom(pb.ModelRef(name="flowers", version=2))
    done.metrics.accuracy = 0.875
    code, out, _ = run(capsys, "jobs")
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split() == ["JOB", "STATE", "MODEL", "CREATED", "RESULT"]
    assert rows[0].split()[:2] == ["job-a", "QUEUED"]
    assert rows[1].split() == ["job-b", "SUCCEEDED", "flowers", "-", "flowers:2", "acc", "87.5%"]

    code, out, _ = run(capsys, "jobs", "--state", "succeeded")
    assert len(out.splitlines()) == 2
    assert run(capsys, "jobs", "--state", "sleeping")[0] == 2

    code, out, _ = run(capsys, "jobs", "job-b")
    assert "state     SUCCEEDED" in out and "model     flowers:2" in out

    code, out, _ = run(capsys, "jobs", "cancel", "job-a")
    assert (code, out) == (0, "job job-a: QUEUED (cancel requested)\n")
    assert run(capsys, "cancel", "job-a")[0] == 0
    assert fake.cancelled == ["job-a", "job-a"]


def test_models(fake: FakeGraft, target: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "models")
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split() == ["NAME", "VERSION", "ALIASES", "BACKBONE", "ACCURACY", "CREATED"]
    assert [r.split()[:3] for r in rows] == [
        ["flowers", "1", "efficientnet_lite0"],
        ["flowers", "2", "production"],
    ]
    code, out, _ = run(capsys, "models", "flowers")
    assert len(out.splitlines()) == 3
    code, _, err = run(capsys, "models", "flow")  # a prefix is not a name
    assert (code, err) == (2, "error: NOT_FOUND: no model flow\n")

    code, out, _ = run(capsys, "models", "flowers@production")
    assert "model     flowers:2" in out and "labels    daisy, rose" in out
    code, out, _ = run(capsys, "models", "flowers:2", "--card")
    assert json.loads(out) == {"backbone": "efficientnet_lite0"}

    code, out, _ = run(capsys, "models", "alias", "flowers", "staging", "1")
    assert (code, out) == (0, "flowers@staging -> version 1\n")
    assert "staging" in fake.models[0].versions[0].aliases


def test_backbones_table(target: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "backbones")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "READY", "INPUT", "STAGES", "PARAMS", "WEIGHTS"]
    assert lines[1].split()[:6] == ["efficientnet_lite0", "*", "yes", "224", "7", "4.7M"]
    assert lines[2].split()[:5] == ["resnet50", "no", "224", "4", "25.6M"]
    assert "graft backbones import resnet50 FILE" in lines[2]
    assert lines[3] == "* default backbone"


def test_upload(
    fake: FakeGraft, target: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    archive = tmp_path / "flowers.zip"
    archive.write_bytes(b"z" * 3000)
    code, out, err = run(capsys, "upload", str(archive), "--chunk-size", "1024")
    assert code == 0
    assert out.startswith("dataset_id  ds-")
    assert "size        2.9 KiB" in out and "images      160 in 2 classes" in out
    assert "graft train NAME --dataset-id ds-" in err
    assert len(fake.uploads[-1]) == 3
    code, _, err = run(capsys, "upload", str(tmp_path / "missing.zip"))
    assert code == 2 and err.startswith("error: ")


# -- security: API keys, TLS flags ---------------------------------------------------------


def test_keys_create_list_revoke_on_the_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from graft.apikeys import hash_token
    from graft.store import SqliteJobStore

    data = tmp_path / "data"
    code, _, err = run(capsys, "keys", "list", "--data-dir", str(data))
    assert code == 2 and "no Graft store" in err  # a typo'd --data-dir creates nothing
    assert not data.exists()
    data.mkdir()
    SqliteJobStore(data / "graft.sqlite3").close()  # what `graft serve` leaves behind

    code, out, err = run(capsys, "keys", "create", "--tenant", "acme", "--data-dir", str(data))
    assert code == 0 and "shown only now" in err
    fields = dict(line.split(None, 1) for line in out.splitlines())
    assert (fields["tenant"], fields["role"]) == ("acme", "tenant")
    token = fields["token"]
    assert token.startswith("graft_") and len(token) == len("graft_") + 43
    argv = ["keys", "create", "--tenant", "ops", "--admin", "--name", "on-call", "--json"]
    code, out, _ = run(capsys, *argv, "--data-dir", str(data))
    admin = json.loads(out)
    assert code == 0 and (admin["role"], admin["name"]) == ("admin", "on-call")

    store = SqliteJobStore(data / "graft.sqlite3")
    key = store.api_key_by_hash(hash_token(token))  # stored by hash, found by the token
    assert (key.key_id, key.tenant, key.revoke_time) == (fields["key_id"], "acme", None)
    stored = b"".join(p.read_bytes() for p in data.glob("graft.sqlite3*"))  # with the WAL
    assert token.encode() not in stored and hash_token(token).encode() in stored

    code, out, _ = run(capsys, "keys", "list", "--data-dir", str(data))
    rows = [line.split() for line in out.splitlines()]
    assert code == 0 and rows[0][:3] == ["KEY", "TENANT", "ROLE"]
    assert {(r[0], r[1], r[2]) for r in rows[1:]} == {
        (fields["key_id"], "acme", "tenant"),
        (admin["key_id"], "ops", "admin"),
    }
    code, out, _ = run(capsys, "keys", "revoke", fields["key_id"], "--data-dir", str(data))
    assert (code, out) == (0, f"revoked {fields['key_id']} (tenant acme)\n")
    assert store.api_key_by_hash(hash_token(token)).revoke_time is not None
    store.close()
    code, out, _ = run(capsys, "keys", "list", "--json", "--data-dir", str(data))
    revoked = {k["key_id"]: k["revoked"] for k in json.loads(out)}
    assert revoked[fields["key_id"]] and not revoked[admin["key_id"]]

    code, _, err = run(capsys, "keys", "revoke", "nope", "--data-dir", str(data))
    assert code == 2 and "error: NotFound: API key 'nope' not found" in err
    code, _, err = run(capsys, "keys", "create", "--tenant", ".x", "--data-dir", str(data))
    assert code == 2 and "tenant" in err
    assert run(capsys, "keys", "create", "--data-dir", str(data))[0] == 2  # no --tenant
    assert run(capsys, "keys", "revoke", "--data-dir", str(data))[0] == 2  # no id


def test_api_key_flag_and_env_are_sent(
    fake: FakeGraft,
    target: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run(capsys, "train", "m", "/data/flowers", "--api-key", "graft_flag")[0] == 0
    assert fake.metadata[-1]["authorization"] == "Bearer graft_flag"
    monkeypatch.setenv("GRAFT_API_KEY", "graft_env")
    assert run(capsys, "train", "m", "/data/flowers")[0] == 0
    assert fake.metadata[-1]["authorization"] == "Bearer graft_env"
    monkeypatch.delenv("GRAFT_API_KEY")
    assert run(capsys, "train", "m", "/data/flowers")[0] == 0
    assert "authorization" not in fake.metadata[-1]  # the embedded default: nothing sent


def test_serve_security_flags(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: list[Config] = []

    def run_server(config: Config) -> int:
        seen.append(config)
        return 0

    fake_module(monkeypatch, "graft.server", run_server=run_server)
    argv = ["serve", "--host", "0.0.0.0", "--tls-cert", "s.crt", "--tls-key", "s.key"]
    argv += ["--tls-client-ca", "ca.crt", "--health-port", "50052"]
    argv += ["--auth-open", "grpc.health.v1.Health"]
    assert cli.main(argv) == 0
    config = seen[-1]
    assert (config.tls_cert, config.tls_key, config.tls_client_ca) == ("s.crt", "s.key", "ca.crt")
    assert config.health_port == 50052 and config.auth_enabled  # auto: not loopback
    assert config.auth_open_services == ("grpc.health.v1.Health",)
    assert cli.main(["serve", "--host", "0.0.0.0", "--auth", "off"]) == 0
    assert not seen[-1].auth_enabled
    assert cli.main(["serve"]) == 0
    assert not seen[-1].auth_enabled and seen[-1].auth == "auto"
    assert cli.main(["serve", "--tls-cert", "s.crt"]) == 2  # no key: refused
