"""Dask distributed plumbing: connect to a scheduler, check workers, reduce results in a tree.

``--scheduler local:N`` starts a ``LocalCluster`` of N single-threaded worker processes;
``--scheduler ADDRESS`` connects to a running ``dask scheduler``. Everything here is generic; the
hash-stats and init-table fan-outs live next to their single-machine code.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from urllib.parse import urlsplit

from ._system import format_bytes
from .errors import EngramError, UsageError

log = logging.getLogger(__name__)
CONNECT_TIMEOUT_S = 10.0
_LOCAL = re.compile(r"^local(?::(\d+))?$")


def parse_scheduler(spec: str) -> tuple[str, int | str]:
    """``"local:4"`` -> ``("local", 4)``; an address -> ``("address", "tcp://host:port")``.

    >>> parse_scheduler("local:2"), parse_scheduler("10.0.0.5:8786")
    (('local', 2), ('address', 'tcp://10.0.0.5:8786'))
    """
    spec = spec.strip()
    match = _LOCAL.match(spec)
    if match:
        workers = int(match.group(1) or 2)
        if workers < 1:
            raise UsageError(f"--scheduler local:N needs N >= 1, got {spec!r}")
        return "local", workers
    if not spec:
        raise UsageError("--scheduler: expected local:N or a scheduler address, got ''")
    if "://" not in spec:
        spec = f"tcp://{spec}"
    parts = urlsplit(spec)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme in ("tcp", "tls") and (not parts.hostname or port is None):
        raise UsageError(
            f"--scheduler: expected local:N or a scheduler address HOST:PORT "
            f"(e.g. 10.0.0.5:8786), got {spec.removeprefix('tcp://')!r}"
        )
    return "address", spec


def _import_distributed():
    try:
        import distributed
    except ImportError as exc:
        raise EngramError(
            "--scheduler needs dask distributed: pip install 'engramctl[dask]'"
        ) from exc
    return distributed


@contextlib.contextmanager
def open_client(
    spec: str,
    *,
    timeout: float = CONNECT_TIMEOUT_S,
    memory_limit: str | int | None = "auto",
) -> Iterator:
    """A connected ``distributed.Client`` whose workers run this engramctl version.

    Raises :class:`EngramError` within ``timeout`` seconds when the scheduler cannot be reached.
    """
    distributed = _import_distributed()
    kind, value = parse_scheduler(spec)
    if not log.isEnabledFor(logging.DEBUG):  # dask's INFO chatter drowns the progress bar
        logging.getLogger("distributed").setLevel(logging.ERROR)
    cluster = None
    try:
        if kind == "local":
            cluster = distributed.LocalCluster(
                n_workers=int(value),
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                memory_limit=memory_limit,
                silence_logs=logging.ERROR,
            )
            address = cluster.scheduler_address
        else:
            address = str(value)
            _probe(address, timeout)
        try:
            client = distributed.Client(address, timeout=timeout, set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise EngramError(
                f"cannot reach the dask scheduler at {address} within {timeout:.0f} s ({exc}); "
                "start one with `dask scheduler` or use --scheduler local:N"
            ) from None
        try:
            if kind == "local":
                client.wait_for_workers(int(value), timeout=max(timeout, 60))
            check_worker_versions(client)
            yield client
        finally:
            client.close()
    finally:
        if cluster is not None:
            cluster.close()


def _probe(address: str, timeout: float) -> None:
    """Fail at once on a refused connection (the dask client would retry until its timeout)."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(address)
    if parts.scheme not in ("tcp", "tls") or not parts.hostname or not parts.port:
        return  # other transports (ucx, inproc): let the dask client try
    try:
        socket.create_connection((parts.hostname, parts.port), timeout=min(timeout, 5.0)).close()
    except OSError as exc:
        raise EngramError(
            f"cannot reach the dask scheduler at {address} ({exc.strerror or exc}); "
            "start one with `dask scheduler` or use --scheduler local:N"
        ) from None


def _engramctl_version() -> str:
    import engramctl

    return engramctl.__version__


def check_worker_versions(client) -> dict[str, str]:
    """Refuse workers whose engramctl version differs from the client's, naming both."""
    import engramctl

    try:
        versions = client.run(_engramctl_version)
    except Exception as exc:  # workers without engramctl fail to unpickle the function
        raise EngramError(
            f"cannot run engramctl on the dask workers ({type(exc).__name__}: {exc}); "
            f"install engramctl {engramctl.__version__} on every worker"
        ) from None
    if not versions:
        raise EngramError("the dask scheduler has no workers; start some with `dask worker`")
    for worker, version in sorted(versions.items()):
        if version != engramctl.__version__:
            raise EngramError(
                f"dask worker {worker} runs engramctl {version} but this client runs "
                f"{engramctl.__version__}; install the same version everywhere"
            )
    return versions


def worker_memory_limits(client) -> dict[str, int]:
    """Memory limit in bytes of every worker (0 means unlimited)."""
    workers = client.scheduler_info().get("workers", {})
    return {addr: int(info.get("memory_limit") or 0) for addr, info in workers.items()}


def check_worker_memory(client, needed_bytes: int, *, what: str, advice: str) -> None:
    """Refuse when a worker's memory limit is below ``needed_bytes``."""
    for worker, limit in sorted(worker_memory_limits(client).items()):
        if limit and limit < needed_bytes:
            raise EngramError(
                f"{what} needs about {format_bytes(needed_bytes)} per worker but worker {worker} "
                f"has a limit of {format_bytes(limit)}; {advice}"
            )


def _identity(value):
    return value


def submit_shared(client, value, *, key: str):
    """Send ``value`` to the workers once, for many tasks to share: a future of a task, not
    scattered data, so if every worker holding it dies the scheduler recomputes it."""
    return client.submit(_identity, value, key=key, pure=False)


def check_workers_see(
    client, missing: Callable[..., list[str]], *args, what: str, advice: str
) -> None:
    """Refuse input some worker cannot see: ``missing(*args)`` runs on every worker and returns
    what that worker cannot open (empty when all is well).

    ``what`` names the input in the error when the check itself fails; ``advice`` follows the
    first thing a worker cannot see.
    """
    try:
        lost = client.run(missing, *args)
    except EngramError:
        raise
    except Exception as exc:
        raise EngramError(f"the dask workers cannot open {what} ({exc})") from None
    for worker, items in sorted(lost.items()):
        if items:
            raise EngramError(f"dask worker {worker} cannot see {items[0]}: {advice}")


def tree_reduce(client, futures: Sequence, merge: Callable, *, fanin: int = 4):
    """Merge futures pairwise-ish in a tree (``fanin`` at a time) on the workers; one future back.

    ``merge(*parts)`` must be associative and commutative for an exact, order-free result.
    """
    if not futures:
        raise ValueError("nothing to reduce")
    level = list(futures)
    while len(level) > 1:
        next_level = []
        for start in range(0, len(level), fanin):
            group = level[start : start + fanin]
            if len(group) == 1:
                next_level.append(group[0])
            else:
                next_level.append(client.submit(merge, *group, pure=False))
        level = next_level
    return level[0]
