"""The files of a batch job: written only under its root, never through a link, never over another's file.

A job's root is the folder it writes in: `--out` (encode: the job folder; decode, mix: the image
folder) or, for a .zip, the folder that holds it. The root is resolved once (a link given as `--out`
is the user's choice); below it every path is opened one component at a time with O_NOFOLLOW, so a
symbolic link (or a file) where a folder is wanted is a `JobError` naming it: no file lands outside
the root and none is made through a linked folder. A file is written to a new temporary file
(O_CREAT | O_EXCL | O_NOFOLLOW) and renamed into place, which replaces a link there and never
follows it; with `replace=False` it is hard-linked into place instead, so a file already there is
never replaced (`FileExistsError`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import sys
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from grouplat.client.batch.task import JobError

_FOLDER = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _parts(relative: str | os.PathLike[str]) -> list[str]:
    parts = [p for p in PurePosixPath(os.fspath(relative)).parts if p != "."]
    if any(p in ("/", "..") for p in parts):
        raise ValueError(f"{os.fspath(relative)!r} is not a path inside the job's folder")  # a bug
    return parts


def _refused(path: Path) -> JobError:
    what = "a symbolic link" if os.path.islink(path) else "not a folder"
    return JobError(
        f"{path} is {what}: a batch job writes only inside its output and follows no link there; "
        "remove it or choose another --out"
    )


def _step(fd: int, name: str, path: Path, create: bool) -> int:
    """The folder `name` in the open folder `fd` (made when `create`), never through a link."""
    for attempt in (0, 1):
        try:
            return os.open(name, _FOLDER, dir_fd=fd)
        except FileNotFoundError:
            if not create or attempt:
                raise
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, dir_fd=fd)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                raise _refused(path) from None
            raise
    raise AssertionError("unreachable")


@contextlib.contextmanager
def folder(root: Path, relative: str | os.PathLike[str] = ".", create: bool = False) -> Iterator[int]:
    """An fd of the folder `root/relative`, opened (and, with `create`, made) without following links.

    Raises:
        JobError: a symbolic link or a file where a folder is wanted (the root included).
        FileNotFoundError: no such folder (without `create`).
    """
    if create:
        root.mkdir(parents=True, exist_ok=True)  # the root's own ancestors are the user's
    try:
        fd = os.open(root, _FOLDER)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise _refused(root) from None
        raise
    try:
        path = root
        for part in _parts(relative):
            path = path / part
            inner = _step(fd, part, path, create)
            os.close(fd)
            fd = inner
        yield fd
    finally:
        os.close(fd)


def open_file(root: Path, relative: str | os.PathLike[str]) -> BinaryIO:
    """`root/relative` open for reading, no link followed on the way or at the end.

    Raises:
        JobError: a symbolic link on the way or at the end.
        FileNotFoundError: no such file.
    """
    *parents, name = _parts(relative)
    with folder(root, PurePosixPath(*parents) if parents else ".") as fd:
        try:
            descriptor = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise JobError(f"{root / relative} is a symbolic link: a batch job follows no link") from None
            raise
    return os.fdopen(descriptor, "rb")


def write_file(
    root: Path,
    relative: str | os.PathLike[str],
    write: Callable[[BinaryIO], object],
    tmp: str | os.PathLike[str],
    *,
    replace: bool = True,
) -> None:
    """Write `root/relative` whole or not at all: a new temporary file in `root/tmp` (same file
    system), fsync, then rename it into place (`replace`) or hard-link it there (not `replace`).

    Args:
        root: the job's root; nothing is written outside it.
        relative: the file, relative to `root` (its folders are made as needed).
        write: writes the content to the open (binary) file it is given.
        tmp: the folder of temporary files, relative to `root`.
        replace: replace a file (or a link, not followed) already at `relative`.

    Raises:
        FileExistsError: not `replace`, and something is at `relative` already (nothing written).
        JobError: a symbolic link (or a file) where a folder is wanted.
    """
    *parents, name = _parts(relative)
    with (
        folder(root, tmp, create=True) as tmp_fd,
        folder(root, PurePosixPath(*parents) if parents else ".", create=True) as dir_fd,
    ):
        part = f"{uuid.uuid4().hex}-{name}"[:255]
        descriptor = os.open(part, _NEW, 0o666, dir_fd=tmp_fd)
        try:
            with os.fdopen(descriptor, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            if replace:
                os.replace(part, name, src_dir_fd=tmp_fd, dst_dir_fd=dir_fd)
            else:
                _place_new(part, tmp_fd, name, dir_fd, root / relative)
            os.fsync(dir_fd)  # the rename itself
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(part, dir_fd=tmp_fd)


def _place_new(part: str, tmp_fd: int, name: str, dir_fd: int, path: Path) -> None:
    """Put the finished temporary file at `name` only if nothing is there (atomically: a hard link)."""
    try:
        os.link(part, name, src_dir_fd=tmp_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
    except FileExistsError:
        raise FileExistsError(errno.EEXIST, "exists already", str(path)) from None
    except OSError as e:  # a file system without hard links: check, then rename (not atomic)
        if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.EXDEV):
            raise
        if exists(dir_fd, name):
            raise FileExistsError(errno.EEXIST, "exists already", str(path)) from None
        os.replace(part, name, src_dir_fd=tmp_fd, dst_dir_fd=dir_fd)


def exists(dir_fd: int, name: str) -> bool:
    """Whether anything (a file, a folder, a link, dangling or not) is at `name` in the folder `dir_fd`."""
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def remove_tree(root: Path, relative: str | os.PathLike[str]) -> None:
    """Remove `root/relative`: a folder with what is in it, or a file or link (not followed); no error."""
    *parents, name = _parts(relative)
    with contextlib.suppress(OSError), folder(root, PurePosixPath(*parents) if parents else ".") as fd:
        mode = os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode
        if not stat.S_ISDIR(mode):
            os.unlink(name, dir_fd=fd)
            return
        if sys.version_info >= (3, 11):
            shutil.rmtree(name, dir_fd=fd)  # it removes the links inside, never follows them
        else:
            shutil.rmtree(root / relative)


def taken(root: Path, targets: Iterable[tuple[str, bool]]) -> list[str]:
    """Check the files a job will write under `root`; return those already there that must not be.

    Args:
        root: the job's root.
        targets: (path relative to `root`, whether something there is an error) for each file.

    Returns:
        The paths (relative) of `targets` flagged as errors where something exists (a file, a
        folder or a link).

    Raises:
        JobError: a symbolic link or a file where one of their folders would be.
    """
    folders: dict[str, bool] = {}  # relative folder → it exists (as a real folder)
    found = []
    for relative, must_be_absent in targets:
        parts = _parts(relative)
        present = True
        for i in range(1, len(parts)):
            sub = "/".join(parts[:i])
            if sub not in folders:
                try:
                    mode = os.lstat(root / sub).st_mode
                except FileNotFoundError:
                    folders[sub] = False
                else:
                    if not stat.S_ISDIR(mode):
                        raise _refused(root / sub)
                    folders[sub] = True
            if not folders[sub]:
                present = False
                break
        if must_be_absent and present and os.path.lexists(root / relative):
            found.append(relative)
    return found
