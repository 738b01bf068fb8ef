"""How many CPUs this process may use, and whether it may fork, for sizing its worker pools. Light on imports:
spawned workers import it."""

import multiprocessing
import os
import sys


def available_cpus() -> int:
    """The CPUs this process is allowed to run on: a job scheduler's, a container's or taskset's share, which is
    often fewer than os.cpu_count(), the machine's total."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def can_fork() -> bool:
    """Whether worker processes may be forked from this one: under Linux. macOS can fork, but not safely once its
    system libraries have started threads (Python itself spawns there)."""
    return sys.platform == "linux" and "fork" in multiprocessing.get_all_start_methods()


def die_with_parent() -> None:
    """In a worker process: end when the process that started it ends, however that ends (killed, its terminal
    closed), rather than live on with no one to read its results. Linux only (prctl); elsewhere nothing."""
    if sys.platform != "linux":
        return
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError):  # no prctl to be found: the worker ends with its pipes, as before
        pass
