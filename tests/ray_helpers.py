"""A local Ray for the tests (2 CPUs, no dashboard), shared per test module, and the checks that no Ray
process is left. In a test module: `ray_cluster = pytest.fixture(scope="module")(ray_helpers.local_ray)`."""

from __future__ import annotations

import os
import time

import pytest


def ray_children() -> list:
    """Ray's processes started by this one (raylet, GCS, workers)."""
    import psutil

    procs = []
    for p in psutil.Process().children(recursive=True):
        try:
            cmd, name = " ".join(p.cmdline()), p.name()
        except psutil.Error:  # it ended while we looked
            continue
        if "ray" in cmd or "raylet" in name or "gcs_server" in name:
            procs.append(p)
    return procs


def _alive(pid: int) -> bool:
    """Whether `pid` runs and is not a zombie; a process that ends while we look is gone."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_gone(pids, timeout=90.0) -> list[int]:
    """The pids still alive after `timeout` seconds (zombies count as gone)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        alive = [p for p in pids if _alive(p)]
        if not alive:
            return []
        time.sleep(0.2)
    return alive


def local_ray():
    """Start a local Ray, yield the `ray` module, shut it down and check that its processes are gone."""
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=100 * 2**20,
    )
    try:
        yield ray
    finally:
        ray.shutdown()
        left = wait_gone([p.pid for p in ray_children()])
        assert not left, f"Ray processes left running: {left}"
