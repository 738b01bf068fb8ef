"""How many CPUs this process may use, for sizing its worker pools. Light on imports: spawned workers import it."""

import os


def available_cpus() -> int:
    """The CPUs this process is allowed to run on: a job scheduler's, a container's or taskset's share, which is
    often fewer than os.cpu_count(), the machine's total."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1
