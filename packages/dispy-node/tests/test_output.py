"""A job's output is kept to its tail (dispy_node._output)."""

from __future__ import annotations

from dispy_node._output import CapturedText, Tail, finish


def test_tail_keeps_the_last_bytes_of_many_pieces():
    tail: Tail[bytes] = Tail(10, b"")
    for i in range(1000):
        tail.add(b"%04d" % i)
    assert tail.value() == b"".join(b"%04d" % i for i in range(1000))[-10:]
    assert tail.total == 4000
    assert tail.dropped == 3990
    assert len(tail._parts) <= 4  # only what the tail needs is held


def test_tail_under_its_limit_keeps_everything():
    tail: Tail[str] = Tail(100, "")
    tail.add("abc")
    tail.add("")
    tail.add("def")
    assert (tail.value(), tail.dropped) == ("abcdef", 0)


def test_no_limit_keeps_everything():
    tail: Tail[bytes] = Tail(0, b"")
    tail.add(b"x" * 1000)
    assert (len(tail.value()), tail.dropped) == (1000, 0)


def test_captured_text_is_a_text_stream_for_print():
    out = CapturedText(5)
    print("hello", "world", file=out)
    assert out.tail.value() == "orld\n"
    assert out.tail.dropped == 7


def test_finish_tells_the_job_what_was_cut():
    stdout, stderr = finish("tail", 96, "err\n", 0, 4)
    assert stdout.startswith("[dispy-node: the first 96 bytes of this job's stdout were cut")
    assert stdout.endswith("tail")
    assert stderr.startswith("err\n")
    assert "output over max_job_output (4 bytes) truncated: stdout" in stderr
    assert finish("a", 0, "b", 0, 4) == ("a", "b")


def test_a_cleared_tail_starts_again():
    tail: Tail[str] = Tail(3, "")
    tail.add("abcdef")
    tail.clear()
    tail.add("xy")
    assert (tail.value(), tail.total, tail.dropped) == ("xy", 2, 0)
