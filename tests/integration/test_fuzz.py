"""Property-based fuzzing of every AdaptationService RPC through a real gRPC channel: any
request, however malformed, gets a specific status code, never INTERNAL or UNKNOWN (which
mean a bug), and the server keeps answering.

Requests are drawn from the proto descriptors themselves, so an RPC or field added later
is fuzzed without touching this file: strings with NUL bytes, control characters, unicode,
path tricks and 300+ characters; integers and enums far out of range; NaN and infinities;
bytes that are almost images (truncated, header-only PNG/JPEG) or nothing like them; and,
mixed in, names of things that exist (a registered model, a real dataset folder), so the
deeper paths run too. Hypothesis runs derandomized (a fixed seed) with a bounded number
of examples, so CI sees the same ~2,000 requests every time; `GRAFT_FUZZ_EXAMPLES`
raises the count per RPC for a longer run (docs/SECURITY.md has one's figures).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from graft.config import Config
from graft.server import BackgroundServer
from graft_client import pb
from tests.helpers import register_random_model

SERVICE = pb.DESCRIPTOR.services_by_name["AdaptationService"]
EXAMPLES = int(os.environ.get("GRAFT_FUZZ_EXAMPLES", "0")) or None
# At least 2,000 requests in all by default (the floor), spread over the RPCs.
PER_RPC = EXAMPLES or -(-2000 // len(SERVICE.methods))
BAD_CODES = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}


def _png(size: tuple[int, int] = (12, 9)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size[1], size[0], 3), 90, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


PNG = _png()
IMAGE_BYTES = [
    PNG,
    PNG[:40],  # truncated
    PNG[:8],  # the signature alone
    b"\xff\xd8\xff\xe0" + b"\x00" * 20,  # a JPEG start, nothing after
    b"GIF89a" + b"\xff" * 30,
    b"",
    b"\x00" * 64,
]

# Strings a hostile caller would try, beside Hypothesis' own text.
NASTY = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "../../etc/passwd",
    "/etc/passwd",
    "/dev/zero",
    "/proc/self/environ",
    "upload:",
    "upload:../../x",
    "upload:" + "0" * 32,
    "m@",
    "m@production",
    "m:0",
    "m:-1",
    "m:99999999999999999999",
    "%s%s%n",
    "é" * 200,
    "\u202e\u0000\ud7ff",
    "a" * 300,
    "/" + "b/" * 200,
    "\n\r\t",
]


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, list[str]]]:
    data = tmp_path_factory.mktemp("fuzz")
    register_random_model(data, "m", ("a", "b"), image_size=32)
    folder = data / "datasets" / "tiny"
    for label in ("a", "b"):
        (folder / label).mkdir(parents=True)
        for i in range(3):
            (folder / label / f"{i}.png").write_bytes(_png((10 + i, 10)))
    config = Config(
        data_dir=data,
        data_roots=(data / "datasets",),
        metrics_port=0,
        predict_runtimes=("eager",),
        advise_timeout_seconds=5.0,
    )
    with BackgroundServer(config, advisor=True) as server:
        channel = grpc.insecure_channel(
            server.target,
            options=[
                ("grpc.max_send_message_length", 64 * 1024 * 1024),
                ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ],
        )
        with channel:
            yield channel, ["m", "tiny", str(folder), "production", "a", "b"]


def _string(known: list[str]) -> st.SearchStrategy[str]:
    # Names of things that exist are drawn as often as the rest together, so that requests
    # get past the first checks into decoding, scanning and the store.
    return st.one_of(
        st.sampled_from(known),
        st.sampled_from(known),
        st.sampled_from(known),
        st.sampled_from(NASTY),
        st.text(max_size=40),
        st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x7F), max_size=400),
    )


_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}


def _scalar(field: FieldDescriptor, known: list[str]) -> st.SearchStrategy[Any]:
    t = field.type
    if t == FieldDescriptor.TYPE_STRING:
        return _string(known)
    if t == FieldDescriptor.TYPE_BYTES:
        return st.one_of(
            st.sampled_from(IMAGE_BYTES), st.sampled_from(IMAGE_BYTES), st.binary(max_size=256)
        )
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        width = 32 if t == FieldDescriptor.TYPE_FLOAT else 64
        return st.one_of(
            st.sampled_from([0.0, -1.0, 1e-12, 1e30, float("nan"), float("inf"), -float("inf")]),
            st.floats(width=width),
        )
    if t == FieldDescriptor.TYPE_ENUM:  # proto3 enums are open: any int32 goes on the wire
        return st.one_of(
            st.sampled_from([v.number for v in field.enum_type.values]),
            st.integers(-5, 100),
            st.integers(-(2**31), 2**31 - 1),
        )
    lo, hi = _INT_RANGES[t]
    small = st.integers(max(lo, -3), min(hi, 300))
    return st.one_of(small, st.sampled_from([lo, hi, 0, 1, 2**31 - 1]), st.integers(lo, hi))


def messages(descriptor: Descriptor, known: list[str], depth: int = 0) -> st.SearchStrategy[Any]:
    """Any message of this type: each field set or left unset, repeated fields of 0-3."""
    cls = message_factory.GetMessageClass(descriptor)
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for field in descriptor.fields:
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if depth >= 3 or field.message_type.GetOptions().map_entry:
                continue
            value: st.SearchStrategy[Any] = st.deferred(
                lambda f=field: messages(f.message_type, known, depth + 1)
            )
        else:
            value = _scalar(field, known)
        if field.is_repeated:
            value = st.lists(value, max_size=3)
        fields[field.name] = st.one_of(st.none(), value)

    @st.composite
    def build(draw: st.DrawFn) -> Any:
        msg = cls()
        for name, strategy in fields.items():
            value = draw(strategy)
            if value is None:
                continue
            field = descriptor.fields_by_name[name]
            if field.is_repeated:
                target = getattr(msg, name)
                for item in value:
                    if field.type == FieldDescriptor.TYPE_MESSAGE:
                        target.add().CopyFrom(item)
                    else:
                        target.append(item)
            elif field.type == FieldDescriptor.TYPE_MESSAGE:
                getattr(msg, name).CopyFrom(value)
            else:
                setattr(msg, name, value)
        return msg

    return build()


def _call(channel: grpc.Channel, method: Any, request: Any) -> grpc.StatusCode:
    """One call with a short deadline; the status code it ended with."""
    path = f"/{SERVICE.full_name}/{method.name}"
    ser = type(request).SerializeToString
    try:
        if method.client_streaming:
            call = channel.stream_unary(path, request_serializer=ser, response_deserializer=bytes)
            call(iter([request, request]), timeout=5)
        elif method.server_streaming:
            stream = channel.unary_stream(path, request_serializer=ser, response_deserializer=bytes)
            for _ in zip(range(3), stream(request, timeout=1.5), strict=False):
                pass
        else:
            unary = channel.unary_unary(path, request_serializer=ser, response_deserializer=bytes)
            unary(request, timeout=5)
    except grpc.RpcError as e:
        return e.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


@pytest.mark.timeout(900)
@pytest.mark.parametrize("method", list(SERVICE.methods), ids=lambda m: m.name)
def test_no_request_makes_the_server_fail(fuzz_server: tuple[Any, list[str]], method: Any) -> None:
    channel, known = fuzz_server
    codes: dict[str, int] = {}

    @settings(
        max_examples=PER_RPC,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(messages(method.input_type, known))
    def run(request: Any) -> None:
        code = _call(channel, method, request)
        codes[code.name] = codes.get(code.name, 0) + 1
        assert code not in BAD_CODES, f"{method.name} answered {code.name} to {request!r}"[:2000]
        if code == grpc.StatusCode.DEADLINE_EXCEEDED and not method.server_streaming:
            # A unary call may only run out of time where it legitimately waits (Advise,
            # uploads being checked); everything else answers at once.
            assert method.name in {"Advise", "UploadDataset"}, (method.name, request)

    run()
    health = channel.unary_unary(
        "/grpc.health.v1.Health/Check",
        request_serializer=lambda _: b"",
        response_deserializer=bytes,
    )
    health(None, timeout=5)  # still serving
    print(f"{method.name}: {sorted(codes.items())}")


@pytest.mark.parametrize(
    ("method", "request_", "field"),
    [
        ("ListJobs", pb.ListJobsRequest(state=99), "state"),  # type: ignore[arg-type]
        ("ListJobs", pb.ListJobsRequest(state=-1), "state"),  # type: ignore[arg-type]
    ],
)
def test_unknown_enum_values_are_the_callers_error(
    fuzz_server: tuple[Any, list[str]], method: str, request_: Any, field: str
) -> None:
    channel, _ = fuzz_server
    call = channel.unary_unary(
        f"/{SERVICE.full_name}/{method}",
        request_serializer=type(request_).SerializeToString,
        response_deserializer=bytes,
    )
    with pytest.raises(grpc.RpcError) as err:
        call(request_, timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in err.value.details() and "unknown value" in err.value.details()


def test_an_unknown_strategy_is_invalid_argument(fuzz_server: tuple[Any, list[str]]) -> None:
    channel, known = fuzz_server
    folder = known[2]
    request = pb.StartFineTuneRequest(
        model_name="m2",
        dataset=pb.DatasetRef(uri=folder),
        plan=pb.TrainingPlan(strategy=99),  # type: ignore[arg-type]
    )
    call = channel.unary_unary(
        f"/{SERVICE.full_name}/StartFineTune",
        request_serializer=pb.StartFineTuneRequest.SerializeToString,
        response_deserializer=bytes,
    )
    with pytest.raises(grpc.RpcError) as err:
        call(request, timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown value 99" in err.value.details()


@st.composite
def _mutated_image(draw: st.DrawFn) -> bytes:
    """A real PNG or JPEG with a few bytes overwritten, cut short, or both."""
    rgb = np.full((draw(st.integers(1, 40)), draw(st.integers(1, 40)), 3), 120, np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, draw(st.sampled_from(["PNG", "JPEG", "GIF", "BMP"])))
    data = bytearray(buf.getvalue())
    for pos, value in draw(st.lists(st.tuples(st.integers(0, len(data) - 1), st.integers(0, 255)))):
        data[pos] = value
    return bytes(data[: draw(st.integers(0, len(data)))] if draw(st.booleans()) else data)


@pytest.mark.timeout(900)
def test_predict_answers_mangled_images_per_image(fuzz_server: tuple[Any, list[str]]) -> None:
    """Predict on a real model with real images mangled: every image gets its own answer
    or its own INVALID_ARGUMENT; the call itself never fails."""
    channel, _ = fuzz_server
    call = channel.unary_unary(
        f"/{SERVICE.full_name}/Predict",
        request_serializer=pb.PredictRequest.SerializeToString,
        response_deserializer=pb.PredictResponse.FromString,
    )
    seen = {"answered": 0, "refused": 0}

    @settings(
        max_examples=EXAMPLES or 300,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.lists(_mutated_image(), min_size=1, max_size=4))
    def run(images: list[bytes]) -> None:
        request = pb.PredictRequest(
            model=pb.ModelRef(name="m"), images=[pb.Image(data=d) for d in images]
        )
        response = call(request, timeout=10)
        assert len(response.predictions) == len(images)
        for p in response.predictions:
            if p.error.code:
                assert p.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0], p.error
                seen["refused"] += 1
            else:
                assert len(p.classes) == 2
                seen["answered"] += 1

    run()
    print(f"Predict, mangled images: {seen}")
    assert seen["answered"] and seen["refused"]  # both paths ran


ABSURD_PLANS = [
    ({"epochs": 10**9}, "plan.epochs"),
    ({"epochs": -1}, "plan.epochs"),
    ({"batch_size": 2**31 - 1}, "plan.batch_size"),
    ({"batch_size": 1}, "plan.batch_size"),
    ({"image_size": 100_000}, "plan.image_size"),
    ({"image_size": 3}, "plan.image_size"),
    ({"head_learning_rate": float("nan")}, "plan.head_learning_rate"),
    ({"base_learning_rate": float("inf")}, "plan.base_learning_rate"),
    ({"head_learning_rate": -0.1}, "plan.head_learning_rate"),
    ({"weight_decay": float("nan")}, "plan.weight_decay"),
    ({"validation_fraction": 1.5}, "plan.validation_fraction"),
    ({"trainable_stages": 99, "strategy": pb.STRATEGY_PARTIAL_FINE_TUNE}, "plan.trainable_stages"),
    ({"feature_stages": [99], "strategy": pb.STRATEGY_FEATURE_EXTRACTION}, "plan.feature_stages"),
    ({"feature_grid": 10**6, "strategy": pb.STRATEGY_FEATURE_EXTRACTION}, "plan.feature_grid"),
    ({"backbone": "x" * 10_000}, "plan.backbone"),
]


@pytest.mark.parametrize(("fields", "field"), ABSURD_PLANS, ids=[f for _, f in ABSURD_PLANS])
def test_absurd_plan_values_name_their_field(
    fuzz_server: tuple[Any, list[str]], fields: dict[str, Any], field: str
) -> None:
    """Each absurd plan value is INVALID_ARGUMENT naming its field, with a short message
    (a 10,000-character backbone name is quoted, not echoed)."""
    channel, known = fuzz_server
    request = pb.StartFineTuneRequest(
        model_name="m3", dataset=pb.DatasetRef(uri=known[2]), plan=pb.TrainingPlan(**fields)
    )
    call = channel.unary_unary(
        f"/{SERVICE.full_name}/StartFineTune",
        request_serializer=pb.StartFineTuneRequest.SerializeToString,
        response_deserializer=bytes,
    )
    with pytest.raises(grpc.RpcError) as err:
        call(request, timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in err.value.details()
    assert len(err.value.details()) < 1000
