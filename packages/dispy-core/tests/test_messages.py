"""Message headers: every type validates and round-trips; anything else is refused."""

from __future__ import annotations

import json
import os
import typing
from pathlib import Path

import pytest
from pydantic import ValidationError

from dispy_core.protocol.discovery import Ping, RelayAnnounce
from dispy_core.protocol.errors import RemoteProtocolError
from dispy_core.protocol.handshake import parse_handshake
from dispy_core.protocol.messages import (
    HANDSHAKE_MESSAGE,
    MAX_CPUS,
    MAX_IDS,
    MAX_NAME,
    MAX_PATH,
    MAX_TEXT,
    MESSAGE,
    PROTOCOL_VERSION,
    JobSubmit,
    Message,
    Notice,
    Refused,
    clip,
    decode,
    encode,
)

NONCE = "ab" * 32
AVAIL = {"cpu": 97.5, "memory": 8 << 30, "disk": 100 << 30, "swap": 1.5}

# One valid header per message type, as it appears on the wire (JSON). A new message type
# must get a sample here (test_every_message_type_has_a_sample says so).
SAMPLES: dict[str, dict[str, typing.Any]] = {
    "hello": {
        "type": "hello",
        "protocol": 1,
        "role": "node",
        "name": "n1",
        "nonce": NONCE,
        "pake": "41" + NONCE,
    },
    "challenge": {
        "type": "challenge",
        "protocol": 1,
        "role": "client",
        "name": "c",
        "nonce": NONCE,
        "pake": "42" + NONCE,
        "proof": "f" * 64,
    },
    "proof": {"type": "proof", "proof": "0" * 64},
    "welcome": {"type": "welcome"},
    "refused": {"type": "refused", "reason": "wrong secret", "protocol": 1},
    "node.info": {
        "type": "node.info",
        "name": "n1",
        "ip_addr": "127.0.0.1",
        "port": 51348,
        "cpus": 4,
        "platform": "Linux-6.1-x86_64",
        "avail": AVAIL,
        "version": "0.1.0",
        "zombie_interval": 3600.0,
    },
    "computation": {
        "type": "computation",
        "comp_id": 7,
        "name": "compute",
        "kind": "function",
        "cpus": 2,
        "dest_path": "work/here",
        "cleanup": False,
        "pulse_interval": 1.0,
    },
    "computation.start": {"type": "computation.start", "comp_id": 7},
    "computation.ready": {
        "type": "computation.ready",
        "comp_id": 7,
        "cpus": 2,
        "dest_path": "/tmp/dispy/node/compute-7",
    },
    "computation.failed": {"type": "computation.failed", "comp_id": 7, "reason": "setup failed"},
    "jobs.submit": {"type": "jobs.submit", "comp_id": 7, "jobs": [[1, 10], [2, 0]]},
    "jobs.cancel": {"type": "jobs.cancel", "comp_id": 7, "job_ids": [1, 2]},
    "jobs.started": {"type": "jobs.started", "comp_id": 7, "job_ids": [3]},
    "jobs.done": {
        "type": "jobs.done",
        "comp_id": 7,
        "jobs": [
            {"job_id": 1, "outcome": "finished", "start": 1.5, "end": 2.5, "size": 10},
            {"job_id": 2, "outcome": "terminated", "start": 1.5, "end": 2.0, "size": 0},
        ],
    },
    "jobs.ack": {"type": "jobs.ack", "comp_id": 7, "job_ids": [1, 2]},
    "recover.request": {"type": "recover.request", "comp_id": 7},
    "recover.status": {
        "type": "recover.status",
        "comp_id": 7,
        "known": True,
        "pending": [3, 4],
        "stored": 2,
    },
    "jobs.provisional": {"type": "jobs.provisional", "comp_id": 7, "job_id": 1},
    "file.put": {
        "type": "file.put",
        "comp_id": 7,
        "path": "data/input.txt",
        "size": 3,
        "mode": 0o600,
        "mtime": 1700000000.0,
        "job_id": 1,
        "req": 4,
    },
    "file.ack": {"type": "file.ack", "comp_id": 7, "req": 4, "error": None},
    "computation.set_cpus": {"type": "computation.set_cpus", "comp_id": 7, "cpus": 1},
    "computation.cpus": {"type": "computation.cpus", "comp_id": 7, "cpus": 1},
    "pulse": {"type": "pulse", "avail": AVAIL, "running": 3},
    "computation.close": {"type": "computation.close", "comp_id": 7, "terminate": True},
    "computation.closed": {"type": "computation.closed", "comp_id": 7},
    "notice": {"type": "notice", "level": "error", "text": "jobs for an unknown computation"},
    "sched.computation": {
        "type": "sched.computation",
        "comp_id": 7,
        "name": "compute",
        "kind": "function",
        "exclusive": True,
        "hosts": ["10.0.0.5", "node-b"],
    },
    "sched.status": {"type": "sched.status", "comp_id": 7, "state": "accepted", "sched_id": 9},
    "sched.offer": {
        "type": "sched.offer",
        "comp_id": 7,
        "name": "n1",
        "ip_addr": "127.0.0.1",
        "port": 51348,
        "cpus": 4,
        "platform": "Linux",
    },
    "sched.allocate": {
        "type": "sched.allocate",
        "comp_id": 7,
        "ip_addr": "127.0.0.1",
        "port": 51348,
        "cpus": 0,
    },
    "sched.node": {
        "type": "sched.node",
        "comp_id": 7,
        "ip_addr": "127.0.0.1",
        "port": 51348,
        "status": "abandoned",
        "reason": "declared dead",
    },
    "sched.submit": {
        "type": "sched.submit",
        "comp_id": 7,
        "jobs": [[1, 10], [2, 0]],
        "pinned": [[2, "127.0.0.1", 51348]],
    },
    "sched.running": {
        "type": "sched.running",
        "comp_id": 7,
        "ip_addr": "127.0.0.1",
        "port": 51348,
        "job_ids": [1, 2],
    },
    "sched.requeued": {"type": "sched.requeued", "comp_id": 7, "job_ids": [1]},
    "sched.done": {
        "type": "sched.done",
        "comp_id": 7,
        "ip_addr": "127.0.0.1",
        "port": 51348,
        "jobs": [{"job_id": 1, "outcome": "finished", "start": 1.0, "end": 2.0, "size": 0}],
    },
    "sched.ended": {
        "type": "sched.ended",
        "comp_id": 7,
        "jobs": [[3, "cancelled", "Cancelled: node 127.0.0.1:51348 lost"]],
    },
    "sched.file": {
        "type": "sched.file",
        "comp_id": 7,
        "ip_addr": "127.0.0.1",
        "port": 51348,
        "path": "data.txt",
        "size": 3,
        "req": 4,
    },
}
REPORT = {"job_id": 1, "outcome": "finished", "start": 0.0, "end": 0.0, "size": 0}
HANDSHAKE_TYPES = {"hello", "challenge", "proof", "welcome", "refused"}


def message_classes() -> list[type]:
    union, *_ = typing.get_args(Message)
    return list(typing.get_args(union))


def type_of(cls: type) -> str:
    return typing.get_args(cls.model_fields["type"].annotation)[0]  # type: ignore[attr-defined]


def as_header(sample: dict[str, typing.Any]) -> bytes:
    return json.dumps(sample).encode()


def test_every_message_type_has_a_sample():
    types = {type_of(cls) for cls in message_classes()}
    missing, stale = sorted(types - set(SAMPLES)), sorted(set(SAMPLES) - types)
    assert not missing, f"add a valid header for each new message type to SAMPLES: {missing}"
    assert not stale, f"remove samples of message types that no longer exist: {stale}"


def test_every_message_type_is_documented_in_protocol_md():
    text = (Path(__file__).parents[1] / "PROTOCOL.md").read_text()
    missing = sorted(kind for kind in SAMPLES if f"| `{kind}` |" not in text)
    assert not missing, f"describe these message types in PROTOCOL.md section 7: {missing}"


def test_message_types_are_unique():
    types = [type_of(cls) for cls in message_classes()]
    assert len(types) == len(set(types))


@pytest.mark.parametrize("kind", sorted(SAMPLES))
def test_message_validates_and_round_trips(kind):
    message = decode(as_header(SAMPLES[kind]))
    assert message.type == kind
    again = decode(encode(message))
    assert again == message
    assert type(again) is type(message)
    # the bytes we send hold every field, so the peer never relies on our defaults
    assert set(json.loads(encode(message))) == set(type(message).model_fields)


@pytest.mark.parametrize("kind", sorted(HANDSHAKE_TYPES))
def test_handshake_message_decodes_during_handshake(kind):
    message = parse_handshake(as_header(SAMPLES[kind]))
    assert message.type == kind


@pytest.mark.parametrize("kind", sorted(set(SAMPLES) - HANDSHAKE_TYPES))
def test_session_message_refused_during_handshake(kind):
    with pytest.raises(RemoteProtocolError, match="malformed handshake message"):
        parse_handshake(as_header(SAMPLES[kind]))


def test_messages_are_frozen():
    message = Notice(text="x")
    with pytest.raises(ValueError, match="frozen"):
        message.text = "y"  # type: ignore[misc]


# --- refusals ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        b'{"type": "no.such.message"}',
        b'{"comp_id": 1}',
        b'{"type": null}',
        b"{}",
        b"[]",
        b'"hello"',
        b"null",
        b"",
        b"not json",
        b'{"type": "notice", "text": "unterminated',
        b"\xff\xfe\x00",
    ],
)
def test_malformed_or_unknown_header_refused(header):
    with pytest.raises(RemoteProtocolError, match="malformed message header"):
        decode(header)


@pytest.mark.parametrize("kind", sorted(SAMPLES))
def test_extra_field_refused(kind):
    with pytest.raises(RemoteProtocolError, match="Extra inputs are not permitted"):
        decode(as_header({**SAMPLES[kind], "unexpected": 1}))


def _required_fields() -> list[tuple[str, str]]:
    out = []
    for cls in message_classes():
        if type_of(cls) not in SAMPLES:
            continue  # test_every_message_type_has_a_sample reports it
        for name, field in cls.model_fields.items():
            if field.is_required():
                out.append((type_of(cls), name))
    return out


@pytest.mark.parametrize(("kind", "field"), _required_fields())
def test_missing_required_field_refused(kind, field):
    sample = {k: v for k, v in SAMPLES[kind].items() if k != field}
    with pytest.raises(RemoteProtocolError, match=f"Field required at {kind}.{field}"):
        decode(as_header(sample))


def _fields() -> list[tuple[str, str]]:
    return [(kind, name) for kind, sample in SAMPLES.items() for name in sample if name != "type"]


@pytest.mark.parametrize(("kind", "field"), _fields())
def test_field_of_wrong_type_refused(kind, field):
    # An object is the wrong type for every field (nested models forbid unknown keys).
    sample = {**SAMPLES[kind], field: {"wrong": ["type"]}}
    with pytest.raises(RemoteProtocolError, match=f"at {kind}.{field}"):
        decode(as_header(sample))


@pytest.mark.parametrize(
    ("kind", "field", "value"),
    [
        ("computation.closed", "comp_id", "seven"),
        ("computation.closed", "comp_id", 7.5),
        ("notice", "text", 5),
        ("notice", "level", "fatal"),
        ("hello", "role", "intruder"),
        ("hello", "nonce", "short"),
        ("hello", "protocol", "one"),
        ("node.info", "port", 70000),
        ("node.info", "cpus", 0),
        ("computation", "kind", "script"),
        ("computation", "comp_id", -1),
        ("computation", "pulse_interval", 0.0),
        ("jobs.submit", "jobs", [[1, 2, 3]]),
        ("jobs.submit", "jobs", [1, 2]),
        ("jobs.submit", "jobs", "1,2"),
        ("jobs.cancel", "job_ids", [None]),
        ("jobs.done", "jobs", [{**REPORT, "outcome": "ok"}]),
        ("jobs.done", "jobs", [{k: v for k, v in REPORT.items() if k != "size"}]),
        ("jobs.done", "jobs", [{**REPORT, "size": -1}]),
        ("file.put", "path", ""),
        ("file.put", "size", -1),
        ("file.put", "mode", 0o10000),
        ("computation.set_cpus", "cpus", 0),
        ("pulse", "avail", {**AVAIL, "gpu": 1}),
        ("refused", "reason", "x" * 2000),
        ("recover.status", "known", "maybe"),
        ("recover.status", "pending", [1.5]),
    ],
)
def test_invalid_field_value_refused(kind, field, value):
    with pytest.raises(RemoteProtocolError, match="malformed message header"):
        decode(as_header({**SAMPLES[kind], field: value}))


@pytest.mark.parametrize("value", [True, "7", 7.0])
def test_integer_field_refuses_other_json_types(value):
    with pytest.raises(RemoteProtocolError):
        decode(as_header({**SAMPLES["computation.closed"], "comp_id": value}))


def test_job_submit_refuses_negative_payload_length():
    with pytest.raises(RemoteProtocolError):
        decode(as_header({**SAMPLES["jobs.submit"], "jobs": [[1, -5]]}))


def test_error_message_names_the_field():
    with pytest.raises(RemoteProtocolError) as info:
        decode(as_header({**SAMPLES["node.info"], "port": "http"}))
    assert "node.info.port" in str(info.value)


def test_job_submit_keeps_job_order():
    message = decode(as_header(SAMPLES["jobs.submit"]))
    assert isinstance(message, JobSubmit)
    assert message.jobs == [(1, 10), (2, 0)]


# --- schema snapshot ---------------------------------------------------------------------

SNAPSHOT = Path(__file__).parent / "message_schema.json"


def wire_only(node, *, in_properties=False):
    """The schema without docstrings and titles, which do not change the wire format."""
    if isinstance(node, dict):
        return {
            key: wire_only(value, in_properties=key == "properties" and not in_properties)
            for key, value in node.items()
            if in_properties or key not in ("description", "title")
        }
    if isinstance(node, list):
        return [wire_only(item) for item in node]
    return node


def current_schema() -> str:
    schema = {
        "protocol_version": PROTOCOL_VERSION,
        "message": wire_only(MESSAGE.json_schema()),
        "handshake_message": wire_only(HANDSHAKE_MESSAGE.json_schema()),
        "ping": wire_only(Ping.model_json_schema()),
        "relay": wire_only(RelayAnnounce.model_json_schema()),
    }
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def test_wire_schema_matches_snapshot():
    # The snapshot makes every change to a header show up in review. When this fails:
    # if old and new peers can no longer understand each other, bump PROTOCOL_VERSION in
    # dispy_core/protocol/messages.py (and describe the change in PROTOCOL.md); then
    # regenerate the file with `DISPY_UPDATE_SNAPSHOTS=1 hatch run unit`.
    schema = current_schema()
    if os.environ.get("DISPY_UPDATE_SNAPSHOTS"):
        SNAPSHOT.write_text(schema)
    assert SNAPSHOT.exists(), f"{SNAPSHOT} is missing; create it with DISPY_UPDATE_SNAPSHOTS=1"
    assert schema == SNAPSHOT.read_text(), (
        "the wire schema changed: review it, bump PROTOCOL_VERSION if the change is "
        "incompatible, and regenerate message_schema.json with DISPY_UPDATE_SNAPSHOTS=1"
    )


def test_protocol_version_is_a_positive_integer():
    assert isinstance(PROTOCOL_VERSION, int)
    assert PROTOCOL_VERSION >= 1


# --- bounds (issue 9, item 4): what a consumer could not use is refused here ------------------

NAN, INF = float("nan"), float("inf")
TOO_MANY = list(range(MAX_IDS + 1))


@pytest.mark.parametrize(
    ("kind", "field", "value"),
    [
        # ids are u64
        ("jobs.submit", "jobs", [[-1, 0]]),
        ("jobs.submit", "jobs", [[2**64, 0]]),
        ("jobs.submit", "jobs", [[1, 2**32]]),
        ("jobs.submit", "notify", [-1]),
        ("jobs.submit", "comp_id", 2**64),
        ("jobs.cancel", "job_ids", [2**64]),
        ("jobs.ack", "job_ids", [-7]),
        ("jobs.started", "job_ids", [2**70]),
        ("jobs.provisional", "job_id", -1),
        ("jobs.done", "jobs", [{**REPORT, "job_id": -1}]),
        ("jobs.done", "jobs", [{**REPORT, "job_id": 2**64}]),
        ("file.put", "job_id", -1),
        ("file.put", "req", -1),
        ("file.ack", "req", 2**64),
        ("recover.request", "comp_id", -1),
        ("computation.start", "comp_id", 2**64),
        ("computation.close", "comp_id", -2),
        # times and floats are finite and in range
        ("jobs.done", "jobs", [{**REPORT, "start": NAN}]),
        ("jobs.done", "jobs", [{**REPORT, "end": INF}]),
        ("jobs.done", "jobs", [{**REPORT, "end": 1e300}]),
        ("jobs.done", "jobs", [{**REPORT, "start": -1.0}]),
        ("file.put", "mtime", 1e300),
        ("file.put", "mtime", NAN),
        ("file.put", "mtime", -INF),
        ("pulse", "avail", {**AVAIL, "cpu": NAN}),
        ("pulse", "avail", {**AVAIL, "cpu": 100.5}),
        ("pulse", "avail", {**AVAIL, "swap": -1.0}),
        ("pulse", "avail", {**AVAIL, "memory": -1}),
        ("pulse", "avail", {**AVAIL, "disk": 2**64}),
        ("pulse", "running", -1),
        ("node.info", "zombie_interval", INF),
        ("node.info", "zombie_interval", 0.0),
        ("computation", "pulse_interval", NAN),
        # sizes are >= 0 and fit a frame
        ("file.put", "size", 2**32),
        ("recover.status", "stored", -1),
        # cpus are bounded
        ("node.info", "cpus", MAX_CPUS + 1),
        ("computation", "cpus", 10**9),
        ("computation.ready", "cpus", 0),
        ("computation.cpus", "cpus", MAX_CPUS + 1),
        # strings: no NUL, bounded
        ("file.put", "path", "dir/a\x00b"),
        ("file.put", "path", "x" * (MAX_PATH + 1)),
        ("computation", "dest_path", "a\x00"),
        ("computation", "name", "comp\x00"),
        ("computation", "name", "n" * (MAX_NAME + 1)),
        ("computation.ready", "dest_path", ""),
        ("computation.failed", "reason", "\x00"),
        ("computation.failed", "reason", "r" * (MAX_TEXT + 1)),
        ("file.ack", "error", "bad\x00"),
        ("node.info", "name", "\x00"),
        ("node.info", "ip_addr", "1" * 256),
        ("node.info", "platform", "p\x00"),
        ("node.info", "version", "v" * (MAX_NAME + 1)),
        ("notice", "text", "t\x00t"),
        ("refused", "reason", "\x00"),
        ("refused", "protocol", -1),
        # lists are bounded
        ("jobs.submit", "jobs", [[i, 0] for i in range(MAX_IDS + 1)]),
        ("jobs.submit", "notify", TOO_MANY),
        ("jobs.cancel", "job_ids", TOO_MANY),
        ("jobs.ack", "job_ids", TOO_MANY),
        ("jobs.started", "job_ids", TOO_MANY),
        ("recover.status", "pending", TOO_MANY),
        ("jobs.done", "jobs", [REPORT] * (MAX_IDS + 1)),
    ],
)
def test_out_of_bounds_value_refused(kind, field, value):
    where = f"malformed message header: .* at {kind}.{field}"
    with pytest.raises(RemoteProtocolError, match=where):
        decode(as_header({**SAMPLES[kind], field: value}))


@pytest.mark.parametrize(
    ("kind", "field", "value"),
    [
        ("jobs.submit", "jobs", [[0, 0], [2**64 - 1, 2**32 - 1]]),
        ("jobs.submit", "jobs", [[i, 0] for i in range(MAX_IDS)]),
        ("jobs.cancel", "job_ids", list(range(MAX_IDS))),
        ("file.put", "mtime", -86400.0),  # a file from before 1970
        ("file.put", "mtime", None),
        ("file.put", "path", "d/" * 2000 + "f"),
        ("pulse", "avail", {**AVAIL, "cpu": 0, "swap": 100}),  # integers where floats go
        ("pulse", "avail", {**AVAIL, "memory": 2**64 - 1}),
        ("node.info", "name", "ünïcode-node ✓"),
        ("node.info", "cpus", MAX_CPUS),
        ("jobs.done", "jobs", [{**REPORT, "start": 1.7e9, "end": 1.7e9 + 1}]),
    ],
)
def test_values_at_the_bounds_accepted(kind, field, value):
    message = decode(as_header({**SAMPLES[kind], field: value}))
    assert decode(encode(message)) == message


def test_ping_fields_are_bounded():
    ping = {"type": "ping", "cluster": "c" * 16, "reply_addr": "127.0.0.1", "reply_port": 9}
    Ping.model_validate_json(json.dumps(ping))
    for field, value in (("cluster", "c\x00" * 8), ("reply_addr", "1\x00"), ("protocol", -1)):
        with pytest.raises(ValidationError):
            Ping.model_validate_json(json.dumps({**ping, field: value}))


def test_clip_makes_any_text_a_valid_reason():
    text = "setup failed:\x00 " + "x" * (2 * MAX_TEXT)
    reason = clip(text)
    assert len(reason) <= MAX_TEXT
    assert "\x00" not in reason
    assert reason.endswith("(text clipped)")
    message = Notice(text=reason)
    assert decode(encode(message)) == message
    assert clip("short") == "short"


@pytest.mark.parametrize("key", ["k" * 2000, "a\x00b"])
def test_refusal_text_of_any_header_can_go_back_in_a_refused_message(key):
    # The location of an error names a key the peer chose: before this was clipped, answering
    # a handshake with such a key raised ValidationError out of the handshake.
    for header, parse in (
        ({**SAMPLES["proof"], key: 1}, parse_handshake),
        ({**SAMPLES["pulse"], key: 1}, decode),
    ):
        with pytest.raises(RemoteProtocolError) as info:
            parse(as_header(header))
        assert Refused(reason=str(info.value)).reason == str(info.value)
