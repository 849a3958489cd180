"""The node-local wire between daemon, computation process and workers (dispy_node._wire)."""

from __future__ import annotations

import json
import os
import socket
import struct

from dispy_node import _wire
from dispy_node._template import _Control, _receive_worker_socket


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


# --- the spawn channel: a worker's socket passed to the computation process -------------------


def test_spawn_request_carries_the_workers_number_and_its_own_socket():
    daemon, process = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        socket.send_fds(daemon, [_wire.SPAWN.pack(7)], [theirs.fileno()])
        socket.send_fds(daemon, [_wire.SPAWN.pack(8)], [theirs.fileno()])
        theirs.close()
        first = _receive_worker_socket(process)
        second = _receive_worker_socket(process)
        assert first is not None
        assert second is not None
        assert (first[0], second[0]) == (7, 8)  # one request per read, never merged
        _wid, worker_end = first
        assert not os.get_inheritable(worker_end.fileno())
        worker_end.sendall(b"result")
        assert ours.recv(16) == b"result"
        worker_end.close()
        second[1].close()
        daemon.close()
        assert _receive_worker_socket(process) is None  # the daemon is gone
    finally:
        for sock in (daemon, process, ours, theirs):
            sock.close()
