"""`segearth batch --engine ray`: the scenes of a job file spread over a pool of Ray actors.

The driver (the process running ``segearth batch``) reads the job file and skips the jobs
whose records say they are finished, with the same checks as the local engine, so a run
with nothing to do starts no worker and loads no model. The scenes left are handed out
largest first, one at a time per worker: the longest scene starts early instead of keeping
one worker busy while the others idle at the end, and a lost worker loses one scene's work.
Each worker (a Ray actor) loads the model once, on the GPU Ray assigns it or on its CPUs,
and runs :func:`segearth_cli.batch.run_scene_group`, the local engine's per-scene work in
one call, so records, locks and atomic outputs are those of a local run. Workers read scenes and
write outputs themselves: paths must name the same files on every node (shared storage).
Only the driver writes the report, one line per job as each scene's results come back.

Faults
------
* A job's exception fails that job alone, inside ``run_scene_group``, as locally.
* A worker lost mid-scene (its process killed, its node gone): no target path holds a
  partial output, because outputs are renamed into place only when complete. The scene
  goes back to the head of the queue for another worker, and a new worker replaces the
  lost one; a scene that loses its worker :data:`MAX_ATTEMPTS` times fails its jobs. The
  retry finds the lost run's records pending and recomputes those jobs; it removes the lost
  run's hidden temporaries when it runs on the same machine (see ``atomic.py``).
* Ctrl-C or SIGTERM on the driver kills the workers. As after a SIGKILLed local run, no
  target is partial; the next run recomputes what was pending and skips what finished.
* Two drivers on one job file: every output is locked (``atomic.OutputLock``) from the
  decision to compute it until its record is complete, so one driver computes it and the
  other reports it skipped (or, with ``wait``, waits and then finds it done).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from .batch import (
    STATUS_FAILED,
    BatchReport,
    Job,
    JobResult,
    LoadOnce,
    ResultCallback,
    BatchSettings,
    group_by_scene,
    run_scene_group,
    scene_identity,
    skip_current_jobs,
)
from .errors import EXIT_FAILURE, SegearthError, UsageError, first_line, one_line
from .process import share_one_malloc_arena

log = logging.getLogger(__name__)

INSTALL_COMMAND = "pip install 'segearth[ray]'"
#: Times a scene may lose its worker before its jobs are reported failed.
MAX_ATTEMPTS = 3
#: With no worker running, how long to wait for one to start before failing what is left.
START_TIMEOUT_S = 600.0
_POLL_S = 5.0
_CONNECT_TIMEOUT_S = 10.0


def import_ray() -> Any:
    """The ray module; a usage error (exit 2) naming the install command when it is missing."""
    try:
        import ray
    except ImportError:
        raise UsageError(
            f"--engine ray needs Ray, which is not installed; install it with: {INSTALL_COMMAND}") from None
    return ray


@dataclass(frozen=True)
class WorkerShape:
    """How many workers, what each reserves on the cluster, and the device it loads the model on."""

    count: int
    cpus: int
    gpus: int
    device: str

    def each(self) -> str:
        return f"{self.cpus} CPU" + ("s" if self.cpus != 1 else "") + (f" and {self.gpus} GPU" if self.gpus else "")

    def describe(self) -> str:
        return f"{self.count} worker{'s' if self.count != 1 else ''} of {self.each()}"


class RayCluster:
    """The Ray cluster a batch runs on, for the length of a ``with`` block.

    ``address`` follows Ray's own rule when None: ``RAY_ADDRESS``, else the cluster last
    started on this machine, else a new local cluster. A driver already connected (a
    program that called ``ray.init`` itself) is used as it is. The block disconnects only
    a connection it made, which also stops a local cluster it started.
    """

    def __init__(self, address: Optional[str] = None):
        self.ray = import_ray()
        self.address = address
        self._connected_here = False

    def __enter__(self) -> "RayCluster":
        ray = self.ray
        if not ray.is_initialized():
            self._connect()
        resources = ray.cluster_resources()
        log.info("Ray cluster at %s: %d node(s), %g CPUs, %g GPUs", ray.get_runtime_context().gcs_address,
                 len(self._alive_nodes()), resources.get("CPU", 0), resources.get("GPU", 0))
        return self

    def _connect(self) -> None:
        address = self.address or os.environ.get("RAY_ADDRESS")
        if address and address not in ("auto", "local"):
            _check_reachable(address, "--address" if self.address else "RAY_ADDRESS")
        # ray.init replaces the SIGTERM handler with one that exits at once; the command
        # line's handler turns SIGTERM into the same clean-up as Ctrl-C, so it is put back.
        in_main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.getsignal(signal.SIGTERM) if in_main_thread else None
        try:
            self.ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                          logging_level=logging.ERROR)
        except Exception as exc:  # noqa: BLE001 - ray.init raises bare Exception for a start-up time-out
            self._stop_partial_start()
            raise SegearthError(f"--engine ray: cannot start or reach a Ray cluster ({first_line(exc)})") from None
        except BaseException:  # Ctrl-C or SIGTERM while the local cluster starts
            self._stop_partial_start()
            raise
        finally:
            if in_main_thread and previous is not None:
                signal.signal(signal.SIGTERM, previous)
        self._connected_here = True

    def _stop_partial_start(self) -> None:
        """Stop what an interrupted or failed ray.init had started."""
        try:
            _shutdown_with_descendants(self.ray)
        except BaseException:  # noqa: BLE001 - best effort while already failing
            pass

    def __exit__(self, *exc_info) -> bool:
        if self._connected_here:
            _shutdown_with_descendants(self.ray)
        return False

    def _alive_nodes(self) -> list[dict[str, float]]:
        return [node["Resources"] for node in self.ray.nodes() if node.get("Alive")]

    def worker_shape(self, device: str, workers: Optional[int], cpus_per_worker: Optional[int]) -> WorkerShape:
        """Workers for ``--device``: a GPU each for auto/cuda when the cluster has GPUs, else CPUs.

        ``workers`` defaults to one per GPU of the cluster, else one; ``cpus_per_worker`` to
        1 for GPU workers (the GPU does the work) and otherwise to an equal share of the
        cluster's CPUs, no more than one node has.
        """
        nodes = self._alive_nodes()
        total_gpus = int(sum(node.get("GPU", 0) for node in nodes))
        if device.startswith("cuda:"):
            raise UsageError(f"--device {device}: with --engine ray every worker uses the GPU Ray assigns it; "
                             "use --device cuda or auto")
        if device == "cuda" and not total_gpus:
            raise UsageError("--device cuda: the Ray cluster has no GPU")
        gpus = 1 if device == "cuda" or (device == "auto" and total_gpus) else 0
        run_device = "cuda" if gpus else ("cpu" if device == "auto" else device)
        count = workers or (total_gpus if gpus else 1)
        total_cpus = int(sum(node.get("CPU", 0) for node in nodes))
        largest_node_cpus = int(max((node.get("CPU", 0) for node in nodes), default=0))
        if cpus_per_worker is None:
            cpus_per_worker = 1 if gpus else max(1, min(largest_node_cpus, total_cpus // count))
        if not any(node.get("CPU", 0) >= cpus_per_worker and node.get("GPU", 0) >= gpus for node in nodes):
            need = f"{cpus_per_worker} CPUs" + (" and a GPU" if gpus else "")
            raise UsageError(f"--cpus-per-worker {cpus_per_worker}: no node of the Ray cluster has {need} "
                             f"(the largest has {largest_node_cpus} CPUs)")
        shape = WorkerShape(count, cpus_per_worker, gpus, run_device)
        log.info("%s, model on %s", shape.describe(), shape.device)
        if count * cpus_per_worker > total_cpus or count * gpus > total_gpus:
            log.warning("%s: more than the cluster's %d CPUs and %d GPUs hold at once; some wait for others to end",
                        shape.describe(), total_cpus, total_gpus)
        return shape

    def run_once(self, shape: WorkerShape, function: Callable[[], Any]) -> Any:
        """``function()`` run once where a worker of ``shape`` would run (to ask a GPU what it supports)."""
        task = self.ray.remote(_call).options(num_cpus=shape.cpus, num_gpus=shape.gpus, max_retries=0)
        try:
            return self.ray.get(task.remote(function))
        except self.ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, SegearthError):
                raise exc.cause from None
            raise

    def run_batch(
        self,
        jobs: Sequence[Job],
        load: Callable[[], Any],
        options: Any,
        *,
        model: dict[str, Any],
        shape: WorkerShape,
        force: bool = False,
        wait: bool = False,
        on_result: Optional[ResultCallback] = None,
        input_size: Optional[int] = None,
    ) -> BatchReport:
        """Run every job on the cluster; the counterpart of :func:`segearth_cli.batch.run_batch`.

        ``load`` returns the segmenter; each worker calls it once, when its first job needs
        computing, so it must be picklable (a module-level function or a closure over plain
        values). Never raises for a job's failure.
        """
        started = time.perf_counter()
        report = BatchReport()

        def emit(result: JobResult) -> None:
            if result.status == STATUS_FAILED:
                log.warning("job %d (%s, %r) failed: %s", result.job.number, result.job.scene.name,
                            result.job.question, result.error)
            report.results.append(result)
            if on_result is not None:
                on_result(result)

        settings = BatchSettings(options, model, force, wait, input_size)
        queue = deque(_Group(scene, group_jobs) for scene, group_jobs in _groups_to_compute(jobs, settings, emit))
        if queue:
            _Pool(self.ray, shape, load, settings, emit).run(queue)
        report.results.sort(key=lambda r: r.job.number)
        report.seconds = time.perf_counter() - started
        return report


def _shutdown_with_descendants(ray) -> None:
    """``ray.shutdown()``, then stop every process the local cluster had started that outlived it.

    Shutdown stops the cluster's own processes, but agents its raylet was still starting
    (a dashboard agent, a runtime-env agent) when a Ctrl-C arrived outlive it, re-parented
    to init, for good. They are this process's descendants until then; so they are listed
    before the shutdown and killed after it if they are still the same processes.
    """
    started = _descendants(os.getpid())
    ray.shutdown()
    deadline = time.monotonic() + _AGENT_EXIT_WAIT_S
    while started and time.monotonic() < deadline:
        started = {pid: birth for pid, birth in started.items() if _birth(pid) == birth}
        if started:
            time.sleep(0.1)
    for pid in started:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:  # gone meanwhile
            pass


#: Seconds the cluster's processes get to exit by themselves after shutdown.
_AGENT_EXIT_WAIT_S = 2.0


def _stat(pid: int | str) -> Optional[tuple[int, str]]:
    """(parent pid, start time) of a live process (Linux); the start time tells it from a later
    process with the same pid. None for a process gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            # After "pid (command)": state, ppid, ...; starttime is field 22 of the whole line.
            fields = handle.read().rsplit(b")", 1)[1].split()
        return (int(fields[1]), fields[19].decode()) if fields[0] != b"Z" else None
    except (OSError, IndexError, ValueError):
        return None


def _birth(pid: int) -> Optional[str]:
    stat = _stat(pid)
    return None if stat is None else stat[1]


def _descendants(root: int) -> dict[int, str]:
    """{pid: start time} of every live process below ``root`` (Linux; empty elsewhere)."""
    try:
        entries = [name for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return {}
    live = {int(name): stat for name in entries if (stat := _stat(name)) is not None}
    found, frontier = {}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, birth) in live.items():
            if ppid == parent and pid not in found:
                found[pid] = birth
                frontier.append(pid)
    return found


def _check_reachable(address: str, named_by: str) -> None:
    """Fail at once when nothing listens at ``[ray://]HOST:PORT`` (ray.init would retry for minutes)."""
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(
            f"{named_by} {address}: expected HOST:PORT, e.g. 10.0.0.1:6379 (what 'ray start --head' prints)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=_CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise UsageError(f"{named_by} {address}: no Ray cluster answers there ({exc.strerror or exc})") from None


def _call(function: Callable[[], Any]) -> Any:
    return function()


def _groups_to_compute(
    jobs: Sequence[Job], settings: BatchSettings, emit: ResultCallback
) -> list[tuple[Path, list[Job]]]:
    """Scene groups with a job to compute, largest scene first; up-to-date jobs are reported skipped here.

    The checks are those ``run_scene_group`` starts with (a worker repeats them, which also
    catches a job another run finished meanwhile). A scene that cannot even be identified
    goes to a worker whole, so its jobs fail with the local engine's message.
    """
    groups = []
    for scene, scene_jobs in group_by_scene(jobs):
        remaining = scene_jobs
        if not settings.force:
            try:
                identity = scene_identity(scene)
            except SegearthError:
                identity = None
            if identity is not None:
                remaining = skip_current_jobs(identity, scene_jobs, settings, emit)
        if remaining:
            groups.append((scene, remaining))
    return sorted(groups, key=lambda group: (_size(group[0]), len(group[1])), reverse=True)


def _size(scene: Path) -> int:
    try:
        return scene.stat().st_size
    except OSError:
        return 0


class _SceneWorker:
    """A Ray actor: one model, loaded on first need, for every scene group it is given."""

    def __init__(self, load: Callable[[], Any], settings: BatchSettings):
        share_one_malloc_arena()  # the worker process is ours, as the command line's is
        self._get_segmenter = LoadOnce(load)
        self._settings = settings

    def ready(self) -> str:
        return socket.gethostname()

    def run(self, scene: Path, jobs: list[Job]) -> list[JobResult]:
        return run_scene_group(scene, jobs, self._settings, self._get_segmenter)


@dataclass
class _Group:
    scene: Path
    jobs: list[Job]
    attempts: int = 0


class _Pool:
    """Hands scene groups to workers as they become free; replaces lost workers; retries their scenes."""

    def __init__(self, ray: Any, shape: WorkerShape, load: Callable[[], Any], settings: BatchSettings,
                 emit: ResultCallback):
        self.ray = ray
        self.shape = shape
        self.emit = emit
        self.worker_class = ray.remote(_SceneWorker).options(
            num_cpus=shape.cpus, num_gpus=shape.gpus, max_restarts=0, max_task_retries=0)
        self.load = load
        self.settings = settings
        self.starting: dict[Any, Any] = {}  # ready() reference -> worker
        self.idle: list[Any] = []
        self.running: dict[Any, tuple[Any, _Group]] = {}  # run() reference -> worker, group
        self.failed_starts = 0
        self.lost = (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                     ray.exceptions.ObjectLostError, ray.exceptions.OutOfMemoryError)

    def start_worker(self) -> None:
        worker = self.worker_class.remote(self.load, self.settings)
        self.starting[worker.ready.remote()] = worker

    def run(self, queue: deque[_Group]) -> None:
        for _ in range(min(self.shape.count, len(queue))):
            self.start_worker()
        waiting_since = time.monotonic()
        try:
            while queue or self.running:
                while self.idle and queue:
                    worker, group = self.idle.pop(), queue.popleft()
                    self.running[worker.run.remote(group.scene, group.jobs)] = (worker, group)
                if not (self.running or self.idle or self.starting):
                    self.fail_all(queue, "no Ray worker could be started")
                    break
                done, _ = self.ray.wait([*self.running, *self.starting], num_returns=1, timeout=_POLL_S)
                if done:
                    waiting_since = time.monotonic()
                elif not self.running and time.monotonic() - waiting_since > START_TIMEOUT_S:
                    self.fail_all(queue, f"no Ray worker of {self.shape.each()} started within {START_TIMEOUT_S:.0f} s")
                    break
                for reference in done:
                    if reference in self.starting:
                        self.started(reference, queue)
                    else:
                        self.finished(reference, queue)
        finally:
            for worker in [*self.starting.values(), *self.idle, *(w for w, _ in self.running.values())]:
                self.ray.kill(worker)

    def started(self, reference: Any, queue: deque[_Group]) -> None:
        worker = self.starting.pop(reference)
        try:
            host = self.ray.get(reference)
        except self.lost as exc:
            self.failed_starts += 1
            log.warning("a Ray worker failed to start: %s", _reason(exc))
            if self.failed_starts < MAX_ATTEMPTS * self.shape.count and queue:
                self.start_worker()
            return
        log.debug("worker started on %s", host)
        self.idle.append(worker)

    def finished(self, reference: Any, queue: deque[_Group]) -> None:
        worker, group = self.running.pop(reference)
        try:
            results = self.ray.get(reference)
        except self.lost as exc:
            # A worker cut off rather than dead could still be writing: end it before its
            # scene is given to another worker, or the two would race for the locks.
            self.ray.kill(worker)
            group.attempts += 1
            reason = _reason(exc)
            if group.attempts >= MAX_ATTEMPTS:
                self.fail_group(group, f"{group.scene}: its Ray worker was lost {group.attempts} times; last: {reason}")
            else:
                log.warning("%s: its Ray worker was lost (%s); trying again on another worker", group.scene.name,
                            reason)
                queue.appendleft(group)
            if queue:
                self.start_worker()
            return
        except self.ray.exceptions.RayTaskError as exc:
            # run_scene_group turns every job failure into a result; what escapes it is not
            # the scene's doing, and the worker stays usable.
            self.fail_group(group, _reason(exc))
        else:
            for result in results:
                self.emit(result)
        self.idle.append(worker)

    def fail_group(self, group: _Group, message: str) -> None:
        for job in group.jobs:
            self.emit(JobResult(job, STATUS_FAILED, error=message, exit_code=EXIT_FAILURE))

    def fail_all(self, queue: deque[_Group], message: str) -> None:
        while queue:
            self.fail_group(queue.popleft(), message)


def _reason(exc: BaseException) -> str:
    """One line for a Ray error: the worker's own exception when there is one, else Ray's first line."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        text = one_line(cause)
        return f"{type(cause).__name__}: {text}" if text else type(cause).__name__
    return first_line(exc)
