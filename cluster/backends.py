"""The backend registry and :func:`get_client`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tempfile
import time
import weakref
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

import dask.config
import yaml
from distributed import Client, LocalCluster
from distributed.core import Status

from knunu.errors import ClusterError

log = logging.getLogger(__name__)

_defaults = yaml.safe_load(resources.files("knunu.configs").joinpath("cluster.yaml").read_text())
dask.config.update_defaults(_defaults)


class Backend(NamedTuple):
    """A cluster backend: how to build the cluster object from its settings.

    ``queue``: the command that lists the user's batch jobs, one job id a line (batch
    backends), to find jobs that ended before their worker came.
    """

    name: str
    description: str
    make: Callable[[dict[str, Any]], Any]
    queue: tuple[str, ...] = ()


#: Dask settings of every knunu worker (batch workers get them as DASK_* variables, see
#: ``worker_env`` in configs/cluster.yaml). A worker paused at 80 % memory resumes only when
#: its memory falls, which unmanaged memory need not do: a measurement run stalled for good
#: with both workers paused at 81 %. Unpaused, a worker that keeps growing is restarted at
#: 95 % by its nanny, and a chunk that kills its workers is named (processors.run).
WORKER_CONFIG = {"distributed.worker.memory.pause": False}


def _local(settings: dict[str, Any]) -> LocalCluster:
    # glibc reads MALLOC_* when a process starts: they must be in the environment the nanny
    # spawns the worker with (pre-spawn-environ; an OS value set before wins), not set later
    spawn_env = {
        **dask.config.get("distributed.nanny.pre-spawn-environ"),
        **{k: str(v) for k, v in settings["worker_env"].items()},
    }
    with dask.config.set({"distributed.nanny.pre-spawn-environ": spawn_env, **WORKER_CONFIG}):
        cluster = LocalCluster(
            n_workers=settings["n_workers"],
            threads_per_worker=settings["threads_per_worker"],
            processes=settings["processes"],
            memory_limit=settings["memory_limit"],
            host=settings["host"],
            dashboard_address=settings["dashboard_address"],
            # the nanny keeps this for the workers it restarts: the global setting above reached
            # only the first ones (a worker restarted at 95 % paused again, stop 35)
            config=dict(WORKER_CONFIG),
        )
    if settings["processes"]:
        keep_workers(cluster)
    return cluster


#: Seconds between the checks of :func:`keep_workers`.
KEEP_WORKERS_S = 2.0
#: Seconds between two queries of the batch system by :func:`keep_workers` (it asks only
#: while a submitted job's worker has not come).
QUEUE_QUERY_S = 30.0


async def _queued(command: tuple[str, ...]) -> set[str] | None:
    """The job ids the batch system lists (``command``), or None if it cannot be asked."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
    except OSError as exc:
        log.warning("cluster: %s failed (%s)", command[0], exc)
        return None
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        log.warning("cluster: %s did not answer within 60 s", command[0])
        return None
    if proc.returncode:
        log.warning("cluster: %s failed: %s", command[0], err.decode(errors="replace").strip())
        return None
    return set(out.decode().split())


def _arrived(cluster: Any, name: str) -> bool:
    """Whether the scheduler knows a worker of the planned job ``name`` (grouped or not)."""
    spec = cluster.worker_spec.get(name, {})
    names = {f"{name}{suffix}" for suffix in spec["group"]} if "group" in spec else {name}
    return bool(names & cluster.observed)


def keep_workers(
    cluster: Any,
    interval: float = KEEP_WORKERS_S,
    queue: tuple[str, ...] = (),
    query_interval: float = QUEUE_QUERY_S,
    replace: bool = True,
) -> None:
    """Start again the planned workers a cluster lost, for as long as the cluster runs.

    Local: a nanny restarts its worker process when it dies, but a worker killed while its
    nanny starts it (``Failed to start process``) closes the nanny for good, and the cluster
    keeps the closed nanny in its plan: a LocalCluster ran on with one worker fewer, and with
    none once the same happened to the other (found by the chaos test in CI).

    Batch (adaptive SLURM or HTCondor): a job that ends without being asked to (its walltime,
    ``scancel``, a node lost) is dropped by the cluster ``distributed.deploy.lost-worker-timeout``
    after its worker left, and (distributed 2026.8, measured with single-worker jobs) a new
    job takes its place in the plan. Older versions left it in the plan and adaptive scaling
    submitted none (dask-jobqueue issues 122 and 611); this check submits any planned job
    that is missing.

    A job that ends while no worker of it is connected (cancelled while queued, failed at
    its start; a job of several workers, which the cluster never drops) stays in the
    cluster's workers: with ``queue`` (the batch system's job list), such a job is looked for
    there at most every ``query_interval`` seconds, and cancelled (should the batch system
    hold it where the query does not look) and submitted again once it is no longer listed.
    A single-worker job whose worker had come is left to the cluster's own drop: submitting
    it here first would let that drop cancel the replacement while it waits in the queue.

    Every ``interval`` seconds a closed or failed worker, or one whose start raised (a failed
    ``sbatch``), is dropped from the cluster's workers, and the cluster starts its planned
    workers that are missing again (``SpecCluster._correct_state``: a new nanny, or a new
    batch job of the same name). With ``replace`` False it only notes which jobs' workers
    have come (``cluster.knunu_keeper``, read by :func:`workers_to_come`).
    """
    from tornado.ioloop import PeriodicCallback

    keeper = _Keeper(cluster, queue, query_interval, replace)
    cluster.knunu_keeper = keeper
    callback = PeriodicCallback(keeper.check, interval * 1000)
    cluster.periodic_callbacks["knunu-keep-workers"] = callback
    cluster.loop.add_callback(callback.start)


class _Keeper:
    """The state and the periodic check of :func:`keep_workers` for one cluster."""

    def __init__(
        self, cluster: Any, queue: tuple[str, ...], query_interval: float, replace: bool
    ) -> None:
        self.cluster = cluster
        self.queue = queue
        self.query_interval = query_interval
        self.replace = replace
        self.next_query = 0.0
        # job name -> the batch id of its job whose worker came (ids, not the job objects:
        # the cluster asserts at its close that every job object still alive is closed, and
        # dask-jobqueue's Job.close leaves the status running)
        self.had_worker: dict[str, str | None] = {}

    def failed(self) -> list[str]:
        """Workers closed or failed, or (no start under way) still 'created': a failed start."""
        workers = self.cluster.workers
        out = [name for name, w in workers.items() if w.status in (Status.closed, Status.failed)]
        if not self.cluster._lock.locked():
            out += [name for name, w in workers.items() if w.status == Status.created]
        return out

    def note_arrivals(self) -> None:
        """Note the jobs a worker of which is connected now."""
        for name, job in self.cluster.workers.items():
            if _arrived(self.cluster, name):
                self.had_worker[name] = getattr(job, "job_id", None)

    def unarrived(self) -> dict[str, Any]:
        """Submitted jobs no worker of which is connected now, by name."""
        return {
            name: job
            for name, job in list(self.cluster.workers.items())
            if getattr(job, "job_id", None) and not _arrived(self.cluster, name)
        }

    def never_came(self, name: str, job: Any) -> bool:
        """Whether no worker of this very job (its batch id) has been seen."""
        return self.had_worker.get(name) != job.job_id

    async def gone_from_queue(self) -> list[str]:
        """Jobs without a connected worker that the batch system no longer lists."""
        cluster = self.cluster
        waiting = {
            name: job
            for name, job in self.unarrived().items()
            if self.never_came(name, job) or "group" in cluster.worker_spec[name]
        }
        if not waiting or time.monotonic() < self.next_query:
            return []
        self.next_query = time.monotonic() + self.query_interval
        queued = await _queued(self.queue)
        if queued is None or cluster.status != Status.running:
            return []
        # the cluster may have changed while the batch system answered
        return [
            name
            for name, job in waiting.items()
            if job.job_id not in queued
            and cluster.workers.get(name) is job
            and not _arrived(cluster, name)
        ]

    async def check(self) -> None:
        """Drop what is lost and start the planned workers that are missing."""
        cluster = self.cluster
        if cluster.status != Status.running:
            return
        self.note_arrivals()
        if not self.replace:
            return
        for name in self.failed():
            log.warning("cluster: worker %s lost for good; starting it again", name)
            del cluster.workers[name]
        for name in await self.gone_from_queue() if self.queue else []:
            job = cluster.workers.pop(name)
            log.warning(
                "cluster: batch job %s (%s) is gone with no worker connected; submitting it again",
                job.job_id,
                name,
            )
            with contextlib.suppress(Exception):
                await job.close()
        # planned workers missing: lost above, or dropped by a start that failed (a worker
        # killed while its replacement started; the next check must try again, stop 43)
        if cluster.status != Status.running or not set(cluster.worker_spec) - set(cluster.workers):
            return
        try:
            await cluster._correct_state()
        except Exception as exc:  # tried again at the next check
            log.warning("cluster: starting lost workers failed (%s); trying again", exc)


def _jobqueue(cls_name: str, own_keys: tuple[str, ...]) -> Callable[[dict[str, Any]], Any]:
    """Factory for a dask-jobqueue cluster class with knunu's safety defaults."""

    def make(settings: dict[str, Any]) -> Any:
        import dask_jobqueue
        from distributed.security import Security

        cls = getattr(dask_jobqueue, cls_name)
        kwargs = {k: settings[k] for k in own_keys if settings.get(k) is not None}
        if kwargs.get("log_directory"):
            logs = Path(kwargs["log_directory"]).expanduser()
            logs.mkdir(parents=True, exist_ok=True)
            kwargs["log_directory"] = str(logs)
        worker_args = []
        if settings.get("lifetime"):
            worker_args += ["--lifetime", str(settings["lifetime"]), "--lifetime-restart"]
            if settings.get("lifetime_stagger"):
                worker_args += ["--lifetime-stagger", str(settings["lifetime_stagger"])]
        kwargs["worker_extra_args"] = worker_args
        kwargs["job_script_prologue"] = [
            *(f"export {k}={v}" for k, v in settings["worker_env"].items()),
            *settings["job_script_prologue"],
        ]
        kwargs["scheduler_options"] = {"dashboard_address": settings["dashboard_address"]}
        if settings.get("interface"):
            kwargs["scheduler_options"]["interface"] = settings["interface"]
        tls_dir = None
        if settings.get("tls"):
            tls_dir = _write_temporary_certificates(settings["shared_temp_directory"])
            kwargs["security"] = Security(
                tls_ca_file=str(tls_dir / "ca.pem"),
                **{
                    f"tls_{role}_{kind}": str(tls_dir / f"{kind}.pem")
                    for role in ("scheduler", "worker", "client")
                    for kind in ("cert", "key")
                },
                require_encryption=True,
            )
            kwargs["protocol"] = "tls://"
        try:
            cluster = cls(**kwargs)
        except BaseException:
            if tls_dir is not None:
                shutil.rmtree(tls_dir, ignore_errors=True)
            raise
        if tls_dir is not None:
            # delete the key material with the cluster object, at the latest at interpreter exit
            cluster.knunu_cleanup = weakref.finalize(cluster, shutil.rmtree, tls_dir, True)
        return cluster

    return make


def _write_temporary_certificates(shared: str) -> Path:
    """Write a fresh self-signed CA/cert/key into a private directory under ``shared``.

    The material is distributed's ``Security.temporary``; ``shared`` must be visible to the
    batch workers; files are mode 0600.

    dask-jobqueue would write them itself but leaves the files open; knunu writes, closes and,
    when the cluster closes, deletes them.
    """
    from distributed.security import Security

    base = Path(shared).expanduser()
    base.mkdir(parents=True, exist_ok=True, mode=0o700)
    directory = Path(tempfile.mkdtemp(prefix="tls-", dir=base))
    temporary = Security.temporary()
    for name, pem in (
        ("ca.pem", temporary.tls_ca_file),
        ("cert.pem", temporary.tls_scheduler_cert),
        ("key.pem", temporary.tls_scheduler_key),
    ):
        path = directory / name
        path.touch(mode=0o600)
        path.write_text(pem)
    return directory


_COMMON = (
    "cores",
    "processes",
    "memory",
    "walltime",
    "job_extra_directives",
    "interface",
    "log_directory",
)

#: Registry of backends by name.
BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend("local", "LocalCluster on this machine, bound to 127.0.0.1", _local),
        Backend(
            "slurm",
            "SLURM batch jobs through dask-jobqueue",
            _jobqueue("SLURMCluster", (*_COMMON, "queue")),
            ("squeue", "--me", "--noheader", "--format=%i"),
        ),
        Backend(
            "htcondor",
            "HTCondor batch jobs through dask-jobqueue",
            _jobqueue("HTCondorCluster", (*_COMMON, "disk")),
            # job ids as dask-jobqueue keeps them: ClusterId.ProcId
            ("condor_q", "-format", "%d.", "ClusterId", "-format", "%d\n", "ProcId"),
        ),
    )
}


def cluster_settings(backend: str, **overrides: Any) -> dict[str, Any]:
    """Resolved settings of a backend: dask config under ``knunu.cluster.<backend>`` + overrides.

    Raises:
        ClusterError: unknown backend or unknown override key.

    >>> cluster_settings("local")["host"]
    '127.0.0.1'
    """
    if backend not in BACKENDS:
        raise ClusterError(f"unknown cluster backend {backend!r} (known: {', '.join(BACKENDS)})")
    settings = dict(dask.config.get(f"knunu.cluster.{backend}"))
    unknown = sorted(set(overrides) - set(settings))
    if unknown:
        raise ClusterError(f"cluster backend {backend!r}: unknown setting(s) {', '.join(unknown)}")
    settings.update(overrides)
    return settings


#: Attempts to start a cluster before giving up (a worker can die while it starts).
START_ATTEMPTS = 3


@contextlib.contextmanager
def get_client(backend: str = "local", **overrides: Any) -> Iterator[Client]:
    """A ``distributed.Client`` on a fresh cluster of the named backend, closed on exit.

    Args:
        backend: A key of :data:`BACKENDS`.
        **overrides: Settings that replace the dask-config values.

    Yields:
        The connected client.
    """
    settings = cluster_settings(backend, **overrides)
    if backend != "local" and not (settings["minimum_jobs"] or settings["maximum_jobs"]):
        raise ClusterError(
            f"cluster backend {backend!r} asks for no batch jobs: set"
            f" knunu.cluster.{backend}.maximum_jobs (adaptive) or minimum_jobs in the dask"
            f" config, e.g. DASK_KNUNU__CLUSTER__{backend.upper()}__MAXIMUM_JOBS=10"
        )
    for attempt in range(1, START_ATTEMPTS + 1):
        try:
            cluster = BACKENDS[backend].make(settings)
            break
        except (OSError, RuntimeError, ValueError) as exc:
            # e.g. a worker process killed while its nanny starts it ("Nanny failed to start")
            if attempt == START_ATTEMPTS:
                raise ClusterError(
                    f"cluster backend {backend!r} failed to start ({attempt} attempts): {exc}"
                ) from exc
            log.warning("cluster backend %r failed to start (%s); trying again", backend, exc)
    try:
        if backend != "local":
            adaptive = bool(settings["maximum_jobs"])
            if adaptive:
                cluster.adapt(
                    minimum_jobs=settings["minimum_jobs"], maximum_jobs=settings["maximum_jobs"]
                )
            else:
                cluster.scale(jobs=settings["minimum_jobs"])
            # adaptive: jobs that end on their own are submitted again (adaptive scaling
            # does not); either way, which jobs' workers have come (workers_to_come)
            keep_workers(
                cluster,
                queue=BACKENDS[backend].queue,
                query_interval=float(settings["queue_query_s"]),
                replace=adaptive,
            )
        client = Client(cluster, security=getattr(cluster, "security", None))
        try:
            log.info("cluster %s up, dashboard at %s", backend, client.dashboard_link)
            yield client
        finally:
            client.close()
    finally:
        cluster.close()
        cleanup = getattr(cluster, "knunu_cleanup", None)
        if cleanup is not None:
            cleanup()


def cluster_check(backend: str, n_workers: int = 2, timeout: float = 120.0) -> str:
    """Start a cluster, wait for ``n_workers``, run one task per worker, describe it.

    Returns:
        A short human-readable report (addresses, workers, time to ready).
    """
    overrides: dict[str, Any] = (
        {"n_workers": n_workers}
        if backend == "local"
        else {"minimum_jobs": n_workers, "maximum_jobs": 0}
    )
    start = time.perf_counter()
    with get_client(backend, **overrides) as client:
        try:
            client.wait_for_workers(n_workers, timeout=timeout)
        except TimeoutError as exc:
            raise ClusterError(
                f"cluster backend {backend!r}: fewer than {n_workers} workers after {timeout:.0f} s"
            ) from exc
        ready = time.perf_counter() - start
        results = client.gather(client.map(lambda i: i * i, range(n_workers), pure=False))
        if results != [i * i for i in range(n_workers)]:
            raise ClusterError(f"cluster backend {backend!r}: check task gave wrong results")
        info = client.scheduler_info()
        return (
            f"backend {backend}: {len(info['workers'])} workers ready in {ready:.1f} s\n"
            f"scheduler {info['address']}\ndashboard {client.dashboard_link}"
        )


def memory_limit(client: Any, workers: dict[str, Any] | None = None) -> int | None:
    """The largest memory limit (bytes) among the client's workers now; None without any.

    ``workers``: the scheduler's workers if the caller has just asked for them.
    """
    if workers is None:
        workers = client.scheduler_info(n_workers=-1)["workers"]
    limits = [int(w.get("memory_limit") or 0) for w in workers.values()]
    return max(limits) if limits and max(limits) else None


def worker_death(exc: BaseException, limit: int | None) -> str | None:
    """One line for a task whose workers kept dying (distributed's ``KilledWorker``), else None.

    A worker that crosses its memory limit (``limit``, bytes, as seen while workers ran) is
    killed by its nanny, and so is every worker the scheduler then gives the task: the line
    names the limit and what to change.
    """
    from distributed.scheduler import KilledWorker

    if not isinstance(exc, KilledWorker):
        return None
    known = f"{limit / 2**30:.1f} GiB" if limit else "unknown"
    return (
        f"{exc.allowed_failures + 1} workers died running it (the workers' memory limit is"
        f" {known}; a task needing more memory is killed: make chunks smaller, e.g."
        " ita.chunksize, or give the workers more memory)"
    )


#: Seconds between checks for finished tasks and for workers.
_POLL_S = 2.0
#: Seconds to fetch a finished task's result before taking it for lost with its worker.
_RESULT_S = 30.0


def workers_to_come(client: Any) -> bool:
    """Whether workers are still to come, so that a cluster without any is waited for.

    They are while no worker has joined the client's scheduler yet, and while its batch
    cluster holds a submitted job no worker of which has ever come (queued): an adaptive
    cluster retires idle jobs and submits new ones, which may wait in the queue, between
    two stages, and submits lost jobs again. A job whose workers came and left is not
    waited for.
    """
    keeper = getattr(getattr(client, "cluster", None), "knunu_keeper", None)
    if keeper is not None and any(
        keeper.never_came(name, job) for name, job in keeper.unarrived().items()
    ):
        return True
    return not had_workers(client)


def had_workers(client: Any) -> bool:
    """Whether any worker has joined the client's scheduler since it started (its event log)."""
    events = client.get_events("all")
    return any(isinstance(m, dict) and m.get("action") == "add-worker" for _, m in events)


def _fetched(done: set[Any], position: dict[Any, int], pending: set[Any]) -> list[tuple[int, Any]]:
    """(position, result or exception) of every finished future, in submission order.

    Every result of the batch is fetched before the caller sees any: the caller may end
    workers (a progress callback, a batch system) that hold the others. A result that went
    with its worker goes back to ``pending``: it is computed again.
    """
    batch = []
    for future in sorted(done, key=lambda f: position[f.key]):
        try:
            result = future.result(timeout=_RESULT_S)
        except TimeoutError:
            pending.add(future)
            continue
        except Exception as exc:
            result = exc
        future.release()
        batch.append((position[future.key], result))
    return batch


def completed(
    client: Any,
    futures: list[Any],
    name: str,
    what: str,
    no_workers_timeout: float,
    error: Callable[[str], Exception],
) -> Iterator[tuple[int, Any, int | None]]:
    """(position, result or the exception it raised, workers' memory limit) as futures finish.

    Watches the cluster meanwhile: left without workers for ``no_workers_timeout`` seconds
    (batch jobs at their walltime, none coming back; a cluster whose first jobs are still
    queued waits for them), it raises ``error(line)`` with one line
    naming ``name`` and how many ``what`` were left. Unfinished futures are cancelled when it
    is closed (use it with ``contextlib.closing``: a caller that stops early cancels what is
    left at once). Results are released as they are fetched.
    """
    from distributed import wait

    position = {f.key: k for k, f in enumerate(futures)}
    pending = set(futures)
    alone_since: float | None = None
    limit = memory_limit(client)
    try:
        while pending:
            try:
                done, pending = wait(pending, timeout=_POLL_S, return_when="FIRST_COMPLETED")
            except TimeoutError:  # nothing finished in the meantime
                done = set()
            for k, result in _fetched(done, position, pending):
                yield k, result, limit
            if done:
                alone_since = None
                continue
            workers = client.scheduler_info(n_workers=-1)["workers"]
            if workers:
                alone_since = None
                limit = memory_limit(client, workers) or limit
                continue
            if workers_to_come(client):
                alone_since = None  # batch jobs still queued: the clock starts once none is
                continue
            alone_since = alone_since or time.monotonic()
            if time.monotonic() - alone_since > no_workers_timeout:
                raise error(
                    f"{name}: no Dask workers for {no_workers_timeout:.0f} s (batch jobs ended?)"
                    f" with {len(pending)} of {len(futures)} {what} to go"
                )
    finally:
        client.cancel([f for f in futures if not f.done()])
