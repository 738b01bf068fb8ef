"""Writing files so that nothing half-written is ever seen under a real name, and crashes leave no litter.

Every file jmvae writes (models, training states, caches, images) is written under a temporary name in the same
folder and renamed onto the real name only when complete: a rename within one file system is atomic, so a kill at
any moment leaves either the old file or the new one. The temporary name carries the writer's process id, so a
later run can tell the litter of a dead process from a write still under way in a live one.
"""

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TMP_SUFFIX = ".tmp"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block ends without an error it is flushed to disk, given the
    mode a plain open() would give (the user's umask), and renamed onto `path`. On an error it is removed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{TMP_SUFFIX}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | Path, data: bytes) -> None:
    with replacing(path) as tmp:
        tmp.write_bytes(data)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but another user's
        return True
    return True


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporaries that `replacing` left in `folder` for processes that no longer run (a kill -9, a power
    cut); those of live processes are left alone. Returns what was removed."""
    removed = []
    try:
        candidates = list(Path(folder).glob(f".*{TMP_SUFFIX}"))
    except OSError:
        return removed
    for tmp in candidates:
        parts = tmp.name.split(".")  # "", name..., pid, token, "tmp"
        if len(parts) < 5 or not parts[-3].isdigit():
            continue
        pid = int(parts[-3])
        if pid != os.getpid() and not _pid_alive(pid):
            try:
                tmp.unlink()
                removed.append(tmp)
            except OSError:
                pass
    return removed
