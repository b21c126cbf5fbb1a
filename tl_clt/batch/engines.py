"""Engines: run one function over many tasks on workers that each load their resources once.

A *job* is two picklable pieces: `setup()`, run once per worker (load the model and the CLT), and
`fn(context, task) -> value`, run once per task with what `setup` returned. Both engines yield a
`TaskResult` per task as tasks finish; an exception in `fn` becomes that task's error and the run goes on.

- `LocalEngine`: in this process, one task after the other (no Ray needed).
- `RayEngine`: `workers` Ray actors, each holding `setup()`'s context, fed one task at a time from a
  queue in the driver. When an actor's process dies (killed, out of memory, node lost) its task goes back
  to the front of the queue for another worker and a fresh actor replaces it; a task whose worker died
  `max_attempts` times is reported as failed. Closing the generator (end, error, Ctrl-C) kills the actors
  and, if it started Ray, shuts Ray down.

Attribution (`attribute_many`) is one job; "build a dashboard state for shard k" is another with the same
setup.
"""

from __future__ import annotations

import os
import pickle
import socket
import time
import traceback
import warnings
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

RAY_EXTRA = 'pip install "tl-clt[ray]"'


@dataclass
class TaskResult:
    """What became of one task: its value, or the error it raised (`"TypeName: message"`)."""

    task: Any
    value: Any = None
    error: str | None = None
    traceback: str | None = None
    attempts: int = 1
    worker: str = ""  # "host:pid"
    worker_pid: int | None = None
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # CPU time of the worker process over the task (all its threads)

    @property
    def ok(self) -> bool:
        return self.error is None


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def run_task(context, fn: Callable, task) -> TaskResult:
    """`fn(context, task)`, timed, with an exception turned into the result's error."""
    start, cpu = time.perf_counter(), time.process_time()
    try:
        value, error, trace = fn(context, task), None, None
    except Exception as err:  # noqa: BLE001 - any failure of one task is recorded, the run goes on
        value, error = None, f"{type(err).__name__}: {err}"
        trace = "".join(traceback.format_exception(type(err), err, err.__traceback__, limit=-6))
    return TaskResult(
        task,
        value,
        error,
        trace,
        worker=worker_name(),
        worker_pid=os.getpid(),
        seconds=time.perf_counter() - start,
        cpu_seconds=time.process_time() - cpu,
    )


class LocalEngine:
    """Everything in this process, one task at a time."""

    name = "local"
    workers = 1
    threads_per_worker = None  # leave torch's threads as the user set them

    def map(self, setup: Callable[[], Any], fn: Callable, tasks: Iterable) -> Iterator[TaskResult]:
        context = setup()
        for task in tasks:
            yield run_task(context, fn, task)


def require_ray():
    """The `ray` module, or ImportError naming the extra that installs it."""
    try:
        import ray
    except ImportError:
        raise ImportError(
            f'engine="ray" needs Ray, which is not installed: {RAY_EXTRA} (or pip install "ray>=2.9"); '
            'engine="local" needs nothing more.'
        ) from None
    return ray


class _Worker:
    """The Ray actor: loads the context once, then runs tasks."""

    def __init__(self, setup: Callable[[], Any]):
        self.context, self.error = None, None
        try:
            self.context = setup()
        except Exception as err:  # noqa: BLE001 - handed to the driver, which raises it
            self.error = err if _picklable(err) else RuntimeError(f"{type(err).__name__}: {err}")

    def ready(self) -> tuple[BaseException | None, str]:
        return self.error, worker_name()

    def run(self, fn: Callable, task) -> TaskResult:
        return run_task(self.context, fn, task)


def _picklable(obj) -> bool:
    try:
        pickle.dumps(obj)
    except Exception:  # noqa: BLE001
        return False
    return True


class RayEngine:
    """`workers` Ray actors fed from a queue in the driver (see the module docstring).

    `address`: None starts a local Ray on this machine (or uses the connection `ray.init` already made in
    this process); `"auto"` or `"ray://host:10001"` joins a running cluster. Each worker reserves
    `cpus_per_worker` CPUs (and as many torch threads) and `gpus_per_worker` GPUs (Ray sets
    `CUDA_VISIBLE_DEVICES` for it: one worker per GPU with `gpus_per_worker=1`).

    Used as a context manager, the engine keeps its workers between `map` calls with the same setup (several
    batches, or attribution then dashboards, without loading the model again) and stops them at the end;
    otherwise each `map` starts and stops its own workers. A `map` left early (an error, Ctrl-C) always
    stops the workers, so no task goes on running.
    """

    name = "ray"

    def __init__(
        self,
        workers: int = 1,
        *,
        address: str | None = None,
        cpus_per_worker: float = 1,
        gpus_per_worker: float = 0,
        max_attempts: int = 3,
    ):
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be an int >= 1, got {workers!r}.")
        for name, value in (("cpus_per_worker", cpus_per_worker), ("gpus_per_worker", gpus_per_worker)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1e6:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}.")
        self.workers = workers
        self.address = address
        self.cpus_per_worker = cpus_per_worker
        self.gpus_per_worker = gpus_per_worker
        self.max_attempts = max_attempts
        self.ray = require_ray()
        self._keep = False  # inside `with`: keep the pool between map calls
        self._started = False  # this engine called ray.init, so it calls ray.shutdown
        self._pool: _Pool | None = None

    @property
    def worker_names(self) -> list[str]:
        """`host:pid` of the workers started for the current pool (replacements included)."""
        return list(self._pool.names) if self._pool is not None else []

    @property
    def threads_per_worker(self) -> int:
        return max(1, int(self.cpus_per_worker))

    def __enter__(self) -> RayEngine:
        self._keep = True
        return self

    def __exit__(self, *exc) -> None:
        self._keep = False
        self.close()

    def close(self) -> None:
        """Stop the workers (and Ray, if this engine started it)."""
        self._close_pool()
        if self._started:
            self.ray.shutdown()
            self._started = False

    # ---------------------------------------------------------------- connection
    def _connect(self) -> None:
        ray = self.ray
        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False)
            self._started = True
        self._check_resources()

    def _check_resources(self) -> None:
        have = self.ray.cluster_resources()
        need = {"CPU": self.workers * self.cpus_per_worker, "GPU": self.workers * self.gpus_per_worker}
        short = {k: (v, have.get(k, 0)) for k, v in need.items() if v > have.get(k, 0)}
        if not short:
            return
        what = ", ".join(f"{need:g} {k} needed, {got:g} in the cluster" for k, (need, got) in short.items())
        message = (
            f"{self.workers} workers x ({self.cpus_per_worker:g} CPU, {self.gpus_per_worker:g} GPU): {what}; "
            "use fewer workers or fewer CPUs/GPUs per worker."
        )
        if self.address is None:
            raise ValueError(message)
        warnings.warn(message + " Waiting for the cluster to grow.", stacklevel=3)

    def _pool_for(self, setup, n_tasks: int) -> _Pool:
        if self._pool is not None and self._pool.setup == setup:
            return self._pool
        self._close_pool()
        self._connect()
        worker = self.ray.remote(_Worker).options(
            num_cpus=self.cpus_per_worker, num_gpus=self.gpus_per_worker, max_restarts=0
        )
        self._pool = _Pool(self.ray, worker, setup, max_setup_deaths=2 * self.workers)
        n = self.workers if self._keep else min(self.workers, n_tasks)
        self._pool.start(n)  # together, so that every worker gets work
        return self._pool

    # ---------------------------------------------------------------- the queue
    def map(self, setup: Callable[[], Any], fn: Callable, tasks: Iterable) -> Iterator[TaskResult]:
        pending = deque(enumerate(tasks))
        if not pending:
            return
        finished = False
        try:
            pool = self._pool_for(setup, len(pending))
            attempts: Counter = Counter()
            while pending or pool.busy:
                pool.feed(fn, pending)
                index, task, out = pool.next()
                if isinstance(out, self.ray.exceptions.RayActorError):  # the worker died
                    attempts[index] += 1
                    if attempts[index] < self.max_attempts:
                        pending.appendleft((index, task))
                    if pending or self._keep:
                        pool.spawn()  # a fresh worker in its place
                    if attempts[index] >= self.max_attempts:
                        yield TaskResult(
                            task,
                            error=f"WorkerDied: the worker died {attempts[index]} times while running this "
                            f"task (out of memory?): {out}",
                            attempts=attempts[index],
                        )
                    continue
                pool.feed(fn, pending)  # keep the workers busy while the driver handles this result
                out.attempts = attempts[index] + 1
                yield out
            finished = True
        finally:
            if not self._keep:
                self.close()
            elif not finished:
                self._close_pool()  # left early: stop the tasks still running

    def _close_pool(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None


class _Pool:
    """The driver's side of the Ray workers: the actors, the calls in flight, the idle actors."""

    def __init__(self, ray, worker, setup, max_setup_deaths: int):
        self.ray, self.worker, self.setup = ray, worker, setup
        self.setup_ref = ray.put(setup)
        self.actors: list = []
        self.idle: list = []
        self.in_flight: dict = {}  # ref -> (actor, index, task); index None: the actor's ready() call
        self.setup_deaths, self.max_setup_deaths = 0, max_setup_deaths
        self.names: list[str] = []  # "host:pid" of each worker that loaded

    @property
    def busy(self) -> bool:
        """Is a task in flight? (ready() calls of replacement workers do not count.)"""
        return any(index is not None for _, index, _ in self.in_flight.values())

    def spawn(self) -> None:
        actor = self.worker.remote(self.setup_ref)
        self.actors.append(actor)
        self.in_flight[actor.ready.remote()] = (actor, None, None)

    def start(self, n: int) -> None:
        """Start n workers and wait until they have loaded (raising what a failed load raised)."""
        for _ in range(n):
            self.spawn()
        for ref, (actor, _, _) in list(self.in_flight.items()):
            del self.in_flight[ref]
            try:
                error, name = self.ray.get(ref)
            except self.ray.exceptions.RayActorError as err:
                raise RuntimeError(f"A Ray worker died while loading (out of memory?): {err}") from None
            if error is not None:
                raise error
            self.names.append(name)
            self.idle.append(actor)

    def feed(self, fn: Callable, pending: deque) -> None:
        while self.idle and pending:
            index, task = pending.popleft()
            actor = self.idle.pop()
            self.in_flight[actor.run.remote(fn, task)] = (actor, index, task)

    def next(self) -> tuple[int, Any, Any]:
        """(index, task, TaskResult or the RayActorError of its dead worker) of the next task to finish."""
        while True:
            if not self.in_flight:
                self.spawn()  # every worker died and none is starting
            [ref], _ = self.ray.wait(list(self.in_flight), num_returns=1)
            actor, index, task = self.in_flight.pop(ref)
            try:
                out = self.ray.get(ref)
            except self.ray.exceptions.RayActorError as err:
                self.ray.kill(actor, no_restart=True)
                if index is not None:
                    return index, task, err
                self.setup_deaths += 1
                if self.setup_deaths > self.max_setup_deaths:
                    raise RuntimeError(
                        f"Ray workers keep dying while loading ({err}); out of memory?"
                    ) from None
                self.spawn()
                continue
            self.idle.append(actor)
            if index is not None:
                return index, task, out
            if out[0] is not None:
                raise out[0]
            self.names.append(out[1])

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor, no_restart=True)


def make_engine(
    engine,
    workers: int = 1,
    *,
    address: str | None = None,
    cpus_per_worker: float = 1,
    gpus_per_worker: float = 0,
):
    """An engine from its name ("local" or "ray"); an engine object is returned as it is."""
    if not isinstance(engine, str):
        if not hasattr(engine, "map"):
            raise TypeError(
                f'engine must be "local", "ray" or an engine object, got {type(engine).__name__}.'
            )
        if workers != 1 or address is not None or cpus_per_worker != 1 or gpus_per_worker:
            raise ValueError(
                "workers, address, cpus_per_worker and gpus_per_worker are set on the engine object "
                "itself (RayEngine(workers=..., ...)), not next to it."
            )
        return engine
    if engine == "local":
        if workers != 1 or address is not None or gpus_per_worker:
            raise ValueError(
                'engine="local" runs one worker in this process; for workers, address or GPUs per worker '
                'use engine="ray".'
            )
        return LocalEngine()
    if engine == "ray":
        return RayEngine(
            workers, address=address, cpus_per_worker=cpus_per_worker, gpus_per_worker=gpus_per_worker
        )
    raise ValueError(f'engine must be "local" or "ray", got {engine!r}.')
