"""The node-local wire between daemon, computation process and workers (dispy_node._wire)."""

from __future__ import annotations

import asyncio
import json
import os
import struct

import pytest

from dispy_core.testing import async_test
from dispy_node import _wire
from dispy_node._template import _Control
from dispy_node.executor import WorkerHub


def test_struct_sizes_match_protocol_md():
    assert _wire.CONTROL.size == 8  # json_len:u32 | payload_len:u32
    assert _wire.TO_WORKER.size == 13  # op:u8 | job_id:u64 | payload_len:u32
    assert _wire.FROM_WORKER.size == 30  # op | outcome | job_id | start | end | len
    assert _wire.SEND_FILE.size == 14  # path_len:u16 | mode:u32 | mtime:f64


def test_op_codes_are_distinct():
    ops = [_wire.OP_RUN, _wire.OP_DONE, _wire.OP_PROVISIONAL, _wire.OP_SEND_FILE, _wire.OP_ACK]
    assert len(set(ops)) == len(ops)
    assert _wire.OUTCOME_FINISHED != _wire.OUTCOME_TERMINATED


def test_control_frame_layout():
    frame = _wire.control_frame({"op": "spawn", "wid": 3}, b"xyz")
    head = json.dumps({"op": "spawn", "wid": 3}).encode()
    assert frame == struct.pack("!II", len(head), 3) + head + b"xyz"


def test_control_frames_round_trip_through_the_computation_process_reader():
    rfd, wfd = os.pipe()
    try:
        frames = [({"op": "init", "max_file_size": 0}, b"bundle" * 1000), ({"op": "close"}, b"")]
        data = b"".join(_wire.control_frame(obj, payload) for obj, payload in frames)
        ctrl = _Control(rfd, wfd)
        os.write(wfd, data[:5])  # a partial frame yields nothing yet
        assert ctrl.read_available()
        assert ctrl.next() is None
        os.write(wfd, data[5:])
        assert ctrl.blocking_next() == frames[0]
        assert ctrl.next() == frames[1]
        assert ctrl.next() is None
    finally:
        os.close(rfd)
        os.close(wfd)


def test_control_send_writes_one_whole_frame():
    rfd, wfd = os.pipe()
    try:
        _Control(rfd, wfd).send({"op": "ready", "pid": 42})
        reader = _Control(rfd, wfd)
        assert reader.blocking_next() == ({"op": "ready", "pid": 42}, b"")
    finally:
        os.close(rfd)
        os.close(wfd)


def test_worker_frames_round_trip():
    head = _wire.TO_WORKER.pack(_wire.OP_RUN, 2**64 - 1, 5)
    assert _wire.TO_WORKER.unpack(head) == (_wire.OP_RUN, 2**64 - 1, 5)
    back = _wire.FROM_WORKER.pack(_wire.OP_DONE, _wire.OUTCOME_TERMINATED, 7, 1.5, 2.5, 0)
    assert _wire.FROM_WORKER.unpack(back) == (_wire.OP_DONE, 1, 7, 1.5, 2.5, 0)


# --- the worker hub (a Unix socket, never the network) ----------------------------------------


async def _connect(hub: WorkerHub, token: bytes, wid: int):
    reader, writer = await asyncio.open_unix_connection(hub.path)
    writer.write(token + wid.to_bytes(4, "big"))
    await writer.drain()
    return reader, writer


@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # keep the hub's socket inside the test dir
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    return tmp_path


@async_test()
async def test_worker_with_the_token_is_handed_to_the_daemon(hub_dir):
    hub = WorkerHub()
    await hub.start()
    try:
        if hub.path.startswith("\0"):
            # Linux: an abstract socket, so no file (and no TMPDIR path-length limit)
            assert hub.address.startswith("@")
            assert not list(hub_dir.iterdir())
        else:
            assert oct(os.stat(hub.path).st_mode & 0o777) == oct(0o600)
        wid, fut = hub.expect()
        _, writer = await _connect(hub, hub.token, wid)
        _reader, daemon_side = await asyncio.wait_for(fut, 5.0)
        daemon_side.close()
        writer.close()
    finally:
        await hub.stop()
    if not hub.path.startswith("\0"):
        assert not await asyncio.to_thread(os.path.exists, hub.path)


@async_test()
async def test_worker_with_a_wrong_token_is_turned_away(hub_dir):
    hub = WorkerHub()
    await hub.start()
    try:
        wid, fut = hub.expect()
        reader, writer = await _connect(hub, b"\x00" * len(hub.token), wid)
        assert await asyncio.wait_for(reader.read(), 5.0) == b""  # closed on us
        assert not fut.done() or fut.cancelled()
        writer.close()
    finally:
        await hub.stop()


@async_test()
async def test_wrong_token_does_not_spoil_the_real_workers_slot(hub_dir):
    hub = WorkerHub()
    await hub.start()
    try:
        wid, fut = hub.expect()
        turned_away, intruder = await _connect(hub, b"\x00" * len(hub.token), wid)
        assert await asyncio.wait_for(turned_away.read(), 5.0) == b""
        worker_reader, worker = await _connect(hub, hub.token, wid)
        eof = asyncio.ensure_future(worker_reader.read())  # the hub closing on the worker
        await asyncio.wait({fut, eof}, timeout=5.0, return_when=asyncio.FIRST_COMPLETED)
        eof.cancel()
        assert fut.done(), "the real worker was turned away"
        _reader, daemon_side = fut.result()
        daemon_side.close()
        intruder.close()
        worker.close()
    finally:
        await hub.stop()
