"""``depends`` (modules, packages, data files, classes, functions) and ``dispy_job_depends``."""

from __future__ import annotations

import os

import pytest
from harness import wait_for
from harness.features import (
    DEPENDS_HELPER,
    Recorder,
    call_by_name,
    job_depends_view,
    read_text,
    temp_import,
    use_module,
    use_package,
    use_point,
    wait_nodes,
    whereami,
    write_files,
)

from dispy import DispyJob, DispyNode

pytestmark = pytest.mark.timeout(60)

MODULE = """\
VALUE = "from helper_mod_xyz"


def triple(x):
    return 3 * x
"""

PACKAGE = {
    "helper_pkg_xyz/__init__.py": 'NAME = "helper package"\n',
    "helper_pkg_xyz/sub.py": "def shift(x):\n    return x + 100\n",
}

CLASS_MODULE = """\
class Point:
    def __init__(self, x, y):
        self.x = x
        self.y = y

    def norm2(self):
        return self.x * self.x + self.y * self.y
"""

FUNCTION_SOURCE = """

def helper_fn_xyz(x):
    return ("module helper", x * 2)
"""


def _finished(job):
    assert job.finish.wait(30), f"{job} did not end"
    assert job.status == DispyJob.Finished, (job, job.exception)
    return job.result


def test_module_package_and_data_file(node_factory, cluster_factory, tmp_path):
    node = node_factory.one(cpus=1, name="deps")
    deps = write_files(
        tmp_path / "client-side",
        {"helper_mod_xyz.py": MODULE, "data_xyz.txt": "payload of the data file\n", **PACKAGE},
    )
    with temp_import(deps, "helper_mod_xyz") as module:
        cluster = cluster_factory(use_module, [node], depends=[module], cleanup=False)
        triple, value, where = _finished(cluster.submit(5))
        cluster.close()
    assert (triple, value) == (15, "from helper_mod_xyz")
    # The module was imported from the computation's directory on the node.
    assert where.startswith(str(node.dest_path_prefix)), where
    assert os.path.exists(os.path.join(where, "helper_mod_xyz.py"))

    with temp_import(deps, "helper_pkg_xyz") as package:
        cluster = cluster_factory(use_package, [node], depends=[package])
        assert _finished(cluster.submit(1)) == (101, "helper package")
        cluster.close()

    data = deps / "data_xyz.txt"
    cluster = cluster_factory(read_text, [node], depends=[str(data)])
    assert _finished(cluster.submit("data_xyz.txt")) == "payload of the data file\n"
    cluster.close()


def test_function_in_depends_called_by_name(node_factory, cluster_factory):
    node = node_factory.one(cpus=1, name="dep-fn")
    cluster = cluster_factory(call_by_name, [node], depends=[DEPENDS_HELPER])
    assert _finished(cluster.submit(3)) == ("helper", 33)
    cluster.close()
    # Without it in depends the name does not exist on the node.
    cluster = cluster_factory(call_by_name, [node])
    job = cluster.submit(3)
    assert job.finish.wait(30)
    assert job.status == DispyJob.Terminated
    assert "NameError" in job.exception, job.exception
    cluster.close()


def _finished_or_setup_failed(job, recorder, timeout=15):
    """Bounded: the job's end, or the node reporting that the computation cannot start."""
    wait_for(
        lambda: job.finish.is_set() or recorder.node_events(DispyNode.SetupFailed),
        timeout,
        f"{job} should end (or its node report SetupFailed)",
    )
    failed = recorder.node_events(DispyNode.SetupFailed)
    assert not failed, f"the node could not start the computation: {failed[0].error}"
    return _finished(job)


def test_module_of_class_in_depends_instance_as_argument(node_factory, cluster_factory, tmp_path):
    node = node_factory.one(cpus=1, name="dep-clsmod")
    deps = write_files(tmp_path / "client-side", {"helper_cls_xyz.py": CLASS_MODULE})
    recorder = Recorder()
    with temp_import(deps, "helper_cls_xyz") as module:
        cluster = cluster_factory(
            use_point, [node], depends=[module], cluster_status=recorder.cluster_status
        )
        job = cluster.submit(module.Point(3, 4))
        assert job is not None
        result = _finished_or_setup_failed(job, recorder)
        cluster.close()
    assert result == ("Point", "helper_cls_xyz", 25)


@pytest.mark.parametrize("what", ["class", "function"])
def test_class_or_function_from_client_module_in_depends(
    node_factory, cluster_factory, tmp_path, what
):
    """Regression: they were pickled by reference to a module the node does not have
    (setup failed: ModuleNotFoundError)."""
    node = node_factory.one(cpus=1, name=f"dep-{what}")
    deps = write_files(
        tmp_path / "client-side",
        {"helper_cls_xyz.py": CLASS_MODULE + FUNCTION_SOURCE},
    )
    recorder = Recorder()
    with temp_import(deps, "helper_cls_xyz") as module:
        if what == "class":
            cluster = cluster_factory(
                use_point,
                [node],
                depends=[module.Point],
                cluster_status=recorder.cluster_status,
            )
            job = cluster.submit(module.Point(3, 4))
            expected = ("Point", 25)
        else:
            cluster = cluster_factory(
                call_by_name,
                [node],
                depends=[module.helper_fn_xyz],
                cluster_status=recorder.cluster_status,
            )
            job = cluster.submit(2)
            expected = ("module helper", 4)
        assert job is not None
        result = _finished_or_setup_failed(job, recorder)
        cluster.close(terminate=True)
    assert (result[0], result[-1]) == expected


def test_job_depends_only_for_that_job_and_removed(node_factory, cluster_factory, tmp_path):
    node = node_factory.one(cpus=1, name="job-deps")
    own = tmp_path / "job_file_xyz.txt"
    own.write_text("only for job one")
    cluster = cluster_factory(job_depends_view, [node], cleanup=False)
    first = cluster.submit("job_file_xyz.txt", "extra", dispy_job_depends=[str(own)])
    seen = _finished(first)
    second = cluster.submit("job_file_xyz.txt")
    later = _finished(second)
    cluster.close()

    assert seen["exists"] is True
    assert seen["text"] == "only for job one"
    # dispy_job_depends is not an argument of the computation.
    assert seen["args"] == ("extra",)
    assert seen["kwargs"] == {}
    # The next job on the same node does not see it: it was removed after job one.
    assert later["exists"] is False
    assert later["cwd"] == seen["cwd"]
    # ... and it is not on the node's disk, although cleanup=False kept the directory.
    comp_dir = seen["cwd"]
    assert comp_dir.startswith(str(node.dest_path_prefix)), comp_dir
    assert os.path.isdir(comp_dir), "cleanup=False should keep the computation's directory"
    leftovers = [
        os.path.join(folder, name)
        for folder, _, names in os.walk(node.dest_path_prefix)
        for name in names
        if "job_file_xyz" in name
    ]
    assert leftovers == []


def test_depends_file_reaches_every_node(node_factory, cluster_factory, tmp_path):
    """Two nodes: a computation-wide file is in the directory on both."""
    nodes = node_factory(2, cpus=1, name="dep-two")
    shared = tmp_path / "shared_xyz.txt"
    shared.write_text("everyone")
    cluster = cluster_factory(whereami, nodes, depends=[str(shared)], cleanup=False)
    wait_nodes(cluster, 2)
    jobs = [cluster.submit() for _ in range(6)]
    assert cluster.wait(timeout=30)
    dirs = {job.result for job in jobs}
    cluster.close()
    for folder in dirs:
        with open(os.path.join(folder, "shared_xyz.txt")) as fh:
            assert fh.read() == "everyone"
