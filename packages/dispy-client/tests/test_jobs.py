"""DispyJob (dispy.jobs): status values, the finish event and calling a job."""

from __future__ import annotations

import threading

import pytest

from dispy import DispyJob
from dispy_core.protocol.jobs import JobStatus


def new_job(uid: int = 1) -> DispyJob:
    return DispyJob(uid, (1, 2), {"k": 3})


@pytest.mark.parametrize("status", list(JobStatus))
def test_status_constants_equal_core_values(status):
    assert getattr(DispyJob, status.name) == status.value


def test_status_values_match_the_reference():
    assert (
        DispyJob.Created,
        DispyJob.Running,
        DispyJob.ProvisionalResult,
        DispyJob.Cancelled,
        DispyJob.Terminated,
        DispyJob.Abandoned,
        DispyJob.Finished,
    ) == (5, 6, 7, 8, 9, 10, 11)


def test_new_job_is_created_and_not_finished():
    job = new_job()
    assert job.status == DispyJob.Created
    assert (job.result, job.exception, job.ip_addr) == (None, None, None)
    assert job.id == job._uid  # the submission number until the program sets its own
    assert (job.args, job.kwargs) == ((1, 2), {"k": 3})
    assert not job.finish.is_set()


def test_id_is_the_users_to_set():
    job = new_job()
    job.id = ("batch", 7)
    assert job.id == ("batch", 7)
    assert "('batch', 7)" in repr(job)


def test_mark_done_sets_the_finish_event():
    job = new_job()
    event = job.finish  # created before the job ends
    job._mark_done()
    assert event.is_set()
    assert job.finish is event


def test_finish_event_made_after_the_end_is_already_set():
    job = new_job()
    job._mark_done()
    assert job.finish.is_set()


def test_calling_a_finished_job_returns_its_result():
    job = new_job()
    job.result = {"answer": 42}
    job.status = DispyJob.Finished
    job._mark_done()
    assert job() == {"answer": 42}
    assert job.result == {"answer": 42}


def test_calling_with_clear_forgets_the_result():
    job = new_job()
    job.result = "big"
    job._mark_done()
    assert job(clear=True) == "big"
    assert job.result is None


def test_calling_waits_until_the_job_ends():
    job = new_job()
    got: list[object] = []
    caller = threading.Thread(target=lambda: got.append(job()))
    caller.start()
    caller.join(0.05)
    assert caller.is_alive()  # still waiting: nothing marked the job done
    job.result = 7
    job._mark_done()
    caller.join(5.0)
    assert not caller.is_alive()
    assert got == [7]


def test_repr_names_the_status():
    job = new_job(uid=9)
    assert repr(job) == "<DispyJob 9 Created>"


def test_job_vars_and_pickle_show_its_fields():
    import pickle

    job = new_job()
    job.id = "mine"
    job.status, job.result = DispyJob.Finished, 42
    fields = vars(job)
    assert fields == job.__dict__
    assert (fields["id"], fields["result"], fields["args"]) == ("mine", 42, (1, 2))
    # Plain pickle on purpose: what a user's program does with a job (a results file).
    copy = pickle.loads(pickle.dumps(job))  # noqa: TID251
    assert (copy.id, copy.status, copy(), copy.kwargs) == ("mine", DispyJob.Finished, 42, {"k": 3})
    assert copy.finish.is_set()
    assert "mine" in repr(copy)
    assert "Finished" in repr(copy)
