"""Ray for the data steps that run on it (``--engine ray``): where to find it, and errors
that say what to do instead of hanging.

Ray is an optional extra (``pip install 'lmforge[ray]'``), imported only here and only when a
step asks for it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator

from lmforge.errors import ConfigError


@contextlib.contextmanager
def ray_session(address: str | None, workers: int, progress: bool = True) -> Iterator:
    """The ``ray`` module, connected: to the session this process already started, as it is;
    to the cluster at ``address`` ("auto", "host:port" or "ray://host:port"); else to a new
    Ray on this machine with ``workers`` CPUs, shut down on the way out."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise ConfigError(
            "--engine ray needs Ray Data: pip install 'lmforge[ray]' (or 'ray[data]')"
        ) from None
    if address and address != "auto":
        # ray.init retries an unreachable address for a minute or more: ask the socket first.
        host, _, port = address.removeprefix("ray://").rpartition(":")
        try:
            socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
        except (OSError, ValueError) as e:
            raise ConfigError(
                f"cannot reach a Ray cluster at --address {address} ({e}). Start one with "
                "`ray start --head` on the head node (it prints the address to use), or leave "
                "--address out to run Ray on this machine"
            ) from None
    started = not ray.is_initialized()
    if started:
        kwargs = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
        try:
            if address:
                ray.init(address=address, **kwargs)
            else:
                ray.init(num_cpus=workers, **kwargs)
        except ConnectionError as e:
            raise ConfigError(
                f"no Ray cluster at --address {address}: {e}. Start one with `ray start --head`"
            ) from None
    ctx = ray.data.DataContext.get_current()
    saved = {k: getattr(ctx, k) for k in SETTINGS}
    cpus = int(ray.cluster_resources().get("CPU", 1))
    ctx.enable_progress_bars = progress
    # Shuffles in as many partitions as 2 per CPU (Ray's default, 200, is for terabytes: on a
    # few machines most of its partitions would be empty tasks), by tasks, not new actors.
    ctx.default_hash_shuffle_parallelism = max(2, 2 * cpus)
    ctx.min_parallelism = max(2, 2 * cpus)
    ctx.shuffle_strategy = os.environ.get("LMFORGE_RAY_SHUFFLE", "sort_shuffle_pull_based")
    quiet = logging.getLogger("ray.data")
    level = quiet.level
    if not progress:
        quiet.setLevel(logging.WARNING)
    try:
        yield ray
    finally:
        for k, v in saved.items():
            setattr(ctx, k, v)
        quiet.setLevel(level)
        if started:
            ray.shutdown()


SETTINGS = (
    "enable_progress_bars",
    "default_hash_shuffle_parallelism",
    "min_parallelism",
    "shuffle_strategy",
)
