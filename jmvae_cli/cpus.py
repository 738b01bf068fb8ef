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


def start_worker() -> None:
    """In a worker process: leave Ctrl-C to the parent (it reaches the whole process group; the parent ends the pool,
    and the workers need print no tracebacks), and end when the parent ends, however that ends (killed, its
    terminal closed), rather than live on with no one to read the results. The latter on Linux only (prctl)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform != "linux":
        return
    import ctypes

    pr_set_pdeathsig = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError):  # no prctl to be found: the worker ends with its pipes, as before
        pass
