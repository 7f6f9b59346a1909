"""One run per output folder.

A run never writes into its output folder while it works. It holds a lock beside the folder
(`.<name>.lock`: a second run into the same folder is refused, naming the first), writes every output
into a work folder beside it (`.<name>.running/`), and only when everything is written moves the
outputs in: the earlier run's outputs that this run does not produce are removed, and `manifest.json`
lists the files with their checksums and the command. So after any run the folder holds one run's
complete set of files: the new run's when it succeeds, otherwise the earlier run's, untouched. A run
that fails or is interrupted moves the files it finished to `<name>.incomplete/` beside the folder
(replacing an earlier one) and its error message says so.

Only entries named like this tool's outputs (OUTPUT_PATTERNS) are ever removed from an output folder;
anything else a user keeps there stays. The move itself takes milliseconds, with Ctrl-C and SIGTERM
deferred until it is done.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import fnmatch
import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from layout.core import ctrl_c
from layout.core.errors import UserError
from layout.core.files import write_json

# Every entry a run or a sweep writes into its output folder (a test checks each file a run writes
# against these); an entry of an earlier run that matches and that the new run does not write is removed.
OUTPUT_PATTERNS = ("manifest.json", "config.yaml", "network.npz", "trajectory.npz", "neurons.csv", "metrics.json",
                   "structure.json", "report.md", "structure_layer*.png", "layout.mp4", "layout.gif", "snapshot.png",
                   "layout.html", "sweep.csv", "sweep.md", "contact_sheet.png", "points", "top_images.npz", "atlas_layer*.png",
                   "atlas_top_layer*.png")
MANIFEST = "manifest.json"
CHUNK = 1 << 20


def is_output_name(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in OUTPUT_PATTERNS)


@dataclass(frozen=True)
class RunFolder:
    """Where a run's outputs go (`final`, as the user named it) and where it writes them meanwhile."""

    final: Path
    staging: Path

    def shown(self, path: str | Path) -> Path:
        """The name a file written in the work folder has once the run is complete."""
        path = Path(path)
        try:
            return self.final / path.relative_to(self.staging)
        except ValueError:
            return path


def physical(folder: Path) -> Path:
    """The folder's real place (symbolic links followed), so that the work folder beside it is on the same
    file system and moving files in is a rename."""
    return Path(os.path.realpath(folder))


def staging_path(final: Path) -> Path:
    real = physical(final)
    return real.with_name(f".{real.name}.running")


def incomplete_path(final: Path) -> Path:
    """Where a failed run's finished files go: `<name>.incomplete` beside the folder, as the user named it."""
    shown = final if final.name not in ("", ".", "..") else physical(final)
    return shown.with_name(f"{shown.name}.incomplete")


def lock_path(final: Path) -> Path:
    real = physical(final)
    return real.with_name(f".{real.name}.lock")


@contextlib.contextmanager
def locked(path: Path, final: Path, command: str) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created, and removed when done), or refuse with the holder's pid
    and command. The lock is the kernel's (flock): a run that was killed holds none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "another run"
            os.close(fd)
            raise UserError(f"{final} is in use by another run ({holder}): wait for it to finish, or choose another "
                            "--out") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino  # not a lock file its holder removed meanwhile
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}: {command}"[:4000].encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)


@contextlib.contextmanager
def run_folder(final: str | Path, command: str) -> Iterator[RunFolder]:
    """Lock the output folder, let the run write into its work folder, and move the outputs in when the
    run succeeds (see the module docstring). On any failure the finished files go to `<name>.incomplete`
    and the exception gets a note that says so (the commands print it on the error's line)."""
    final = Path(final)
    started = now()
    with locked(lock_path(final), final, command):
        staging = staging_path(final)
        remove(staging)  # left by a run that was killed: its files were never complete
        staging.mkdir(parents=True)
        folder = RunFolder(final, staging)
        try:
            yield folder
        except BaseException as e:
            kept = keep_apart(folder)
            earlier = "is as it was" if final.exists() else "was not created"
            if kept is not None:
                add_note(e, f"this run's finished files are in {kept}; {final} {earlier}")
            elif final.exists():
                add_note(e, f"{final} is as it was")
            if isinstance(e, OSError) and e.filename:
                raise OSError(e.errno, e.strerror, str(folder.shown(e.filename))) from e
            raise
        with ctrl_c.deferred():
            commit(folder, command, started)


def keep_apart(folder: RunFolder) -> Path | None:
    """Move a failed run's finished files to `<name>.incomplete` (None if it finished none)."""
    staging = folder.staging
    if not any(staging.iterdir()):
        staging.rmdir()
        return None
    target = incomplete_path(folder.final)
    remove(target)
    os.replace(staging, target)
    return target


def commit(folder: RunFolder, command: str, started: str) -> None:
    """Move the complete outputs into the output folder: the manifest last, the earlier run's outputs out."""
    staging, final = folder.staging, physical(folder.final)
    write_json(staging / MANIFEST, manifest(staging, command, started))
    final.mkdir(parents=True, exist_ok=True)
    trash = final.with_name(f".{final.name}.replaced")
    remove(trash)
    trash.mkdir()
    new = sorted(p.name for p in staging.iterdir())
    for name in sorted(os.listdir(final)):
        if is_output_name(name) or name in new:
            os.replace(final / name, trash / name)
    for name in sorted(new, key=lambda n: n == MANIFEST):  # the manifest last: it marks a complete run
        os.replace(staging / name, final / name)
    staging.rmdir()
    remove(trash)


def manifest(staging: Path, command: str, started: str) -> dict:
    files = sorted(p for p in staging.rglob("*") if p.is_file())
    return {
        "command": command,
        "cwd": os.getcwd(),
        "started": started,
        "finished": now(),
        "files": {p.relative_to(staging).as_posix(): {"bytes": p.stat().st_size, "sha256": sha256(p)} for p in files},
    }


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def remove(path: Path) -> None:
    """Remove a file or a folder tree, if it is there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def add_note(e: BaseException, note: str) -> None:
    """BaseException.add_note (Python 3.11), which 3.10 lacks."""
    e.__notes__ = [*getattr(e, "__notes__", ()), note]


def notes(e: BaseException) -> str:
    """An exception's notes, as the end of its one-line message."""
    return "".join(f"; {n}" for n in getattr(e, "__notes__", ()))

