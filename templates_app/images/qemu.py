"""The one place that runs qemu-img.

Every call goes through `run_qemu_img`, which never uses a shell, runs qemu-img under CPU and
address-space limits with a wall-clock timeout, and refuses `json:` pseudo-protocol file names.
Image files can be hostile (they come from user URLs and uploads), and qemu-img parses them: the
limits bound what a crafted header can cost, and the helpers always name every format with `-f`,
`-F` and `-O`, so qemu-img never guesses a format from file contents.
"""

from __future__ import annotations

import functools
import json
import mmap
import os
import resource
import secrets
import signal
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path

QEMU_IMG = "qemu-img"

# Our format names (choices.TemplateFormat) to qemu's driver names. An ISO is raw bytes to qemu.
QEMU_FORMATS: dict[str, str] = {
    "QCOW2": "qcow2",
    "RAW": "raw",
    "VHD": "vpc",
    "VMDK": "vmdk",
    "ISO": "raw",
}

# Enough for `info` and `convert` of qemu-img 7.2 (measured: `info` runs in 64 MiB, `convert`
# needs more than 64 MiB for its coroutine stacks), small enough that a crafted image cannot
# make qemu-img allocate gigabytes of tables.
DEFAULT_ADDRESS_SPACE = 1 << 30
# A conversion runs a pool of I/O threads that grows while the disk is slow; each thread's
# stack and malloc arena count against the address space, so 1 GiB made busy machines abort
# with "qemu_thread_create: Resource temporarily unavailable".
CONVERT_ADDRESS_SPACE = 4 << 30
_STDERR_LIMIT = 2000  # of an error message
_STDERR_KEEP = 64 << 10  # of what qemu-img prints on stderr
_STDOUT_LIMIT = 16 << 20
# `check` and `measure` walk the metadata: proportional to the file (a crafted image that makes
# them run longer is killed and rejected).
CHECK_TIMEOUT = 300
CHECK_CPU_SECONDS = 60


class QemuImgError(Exception):
    """qemu-img failed, was killed by a limit, timed out, or was asked for something unsafe.

    `returncode` is qemu-img's exit status (negative for a signal), or None when qemu-img did
    not run to completion (refused arguments, timeout, missing binary).
    """

    def __init__(self, message: str, returncode: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.returncode = returncode


def qemu_format(image_format: str) -> str:
    """Return qemu's driver name for one of our format names; raise QemuImgError if unknown."""
    try:
        return QEMU_FORMATS[image_format.upper()]
    except KeyError:
        raise QemuImgError(f"unknown image format {image_format!r}") from None


def _check_args(args: Sequence[str | os.PathLike[str]]) -> list[str]:
    """Turn args into strings and refuse any that would make qemu-img parse a json: spec."""
    checked = []
    for arg in args:
        text = os.fspath(arg)
        if not isinstance(text, str):
            raise QemuImgError(f"qemu-img arguments must be text, not {type(text).__name__}")
        # `json:{...}` is a qemu pseudo-protocol: as a file name (or as the value of an `-o`
        # option such as backing_file=) it lets the string pick drivers, hosts and files.
        if text.startswith("json:") or "=json:" in text:
            raise QemuImgError(f"refusing a json: pseudo-protocol file name: {text[:200]!r}")
        checked.append(text)
    return checked


def _limits(cpu_seconds: int, address_space: int):
    """Return a preexec_fn that applies the resource limits in the child before exec."""

    def apply() -> None:
        # Runs between fork and exec: only setrlimit calls, nothing that could take a lock.
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
        resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))
        # Hitting a limit ends in SIGABRT or SIGXCPU: no core files in the worker's directory.
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def _trim(stderr: str) -> str:
    text = stderr.strip()
    # qemu-img prefixes its messages with the program name; the user does not need it.
    if text.startswith("qemu-img: "):
        text = text[len("qemu-img: ") :]
    if len(text) > _STDERR_LIMIT:
        text = text[:_STDERR_LIMIT] + "…"
    return text


def _bounded_reader(stream, limit: int, sink: list[bytes]) -> threading.Thread:
    """Read a child's stream to its end, keeping only its first `limit` bytes: a crafted image
    makes `qemu-img check` print one line per bad cluster (millions), which must cost this
    process nothing."""

    def read() -> None:
        kept = 0
        while chunk := stream.read(1 << 16):
            if kept < limit:
                sink.append(chunk[: limit - kept])
                kept += len(sink[-1])
        stream.close()

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def run_qemu_img(
    args: Sequence[str | os.PathLike[str]],
    *,
    timeout: float = 120,
    cpu_seconds: int = 30,
    address_space: int = DEFAULT_ADDRESS_SPACE,
    ok_returncodes: frozenset[int] = frozenset({0}),
) -> subprocess.CompletedProcess[str]:
    """Run `qemu-img *args` (no shell) under limits; return the completed process.

    Raises QemuImgError on an exit status outside `ok_returncodes` (with qemu-img's stderr),
    on a timeout, when the binary is missing, and before running anything when an argument is
    a `json:` name. Of stdout only the first 16 MiB and of stderr the first 64 KiB are kept.
    Callers should pass absolute paths: qemu-img reads `proto:rest` before any `/` as a
    protocol, and an absolute path can never be one.
    """
    command = [QEMU_IMG, *_check_args(args)]
    # A fixed, minimal environment: C locale so messages are stable, nothing inherited that
    # could change qemu-img's behaviour.
    env = {"LC_ALL": "C", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    # Two malloc arenas, not one per thread (64 MiB of address space each on 64-bit).
    env["MALLOC_ARENA_MAX"] = "2"
    what = f"qemu-img {command[1]}" if len(command) > 1 else "qemu-img"
    try:
        process = subprocess.Popen(
            command,
            env=env,
            preexec_fn=_limits(cpu_seconds, address_space),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            close_fds=True,
        )
    except FileNotFoundError:
        raise QemuImgError(f"{QEMU_IMG} is not installed") from None
    out: list[bytes] = []
    err: list[bytes] = []
    readers = [
        _bounded_reader(process.stdout, _STDOUT_LIMIT, out),
        _bounded_reader(process.stderr, _STDERR_KEEP, err),
    ]
    # A blocking wait returns the moment qemu-img exits; Popen.wait(timeout) would poll with
    # sleeps doubling up to 50 ms, which made a 10 ms `create` cost up to twice that. The
    # timeout is a timer that kills the process instead.
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        process.kill()

    timer = threading.Timer(timeout, expire)
    timer.daemon = True
    timer.start()
    try:
        returncode = process.wait()
    finally:
        timer.cancel()
        for reader in readers:
            reader.join()
    if expired.is_set() and returncode == -signal.SIGKILL:
        raise QemuImgError(f"{what} timed out after {timeout:g} s")
    result = subprocess.CompletedProcess(
        command,
        returncode,
        b"".join(out).decode("utf-8", "replace"),
        b"".join(err).decode("utf-8", "replace"),
    )
    if returncode not in ok_returncodes:
        message = _trim(result.stderr)
        if returncode < 0:
            # Killed by a signal: the CPU limit (SIGXCPU/SIGKILL) or an abort when the
            # address-space limit made an allocation fail.
            try:
                name = signal.Signals(-returncode).name
            except ValueError:
                name = f"signal {-returncode}"
            detail = f"killed by {name}"
            message = f"{message} ({detail})" if message else detail
        raise QemuImgError(message or f"qemu-img exited with status {returncode}", returncode)
    return result


def _json_of(result: subprocess.CompletedProcess[str], what: str) -> dict:
    try:
        return json.loads(result.stdout)
    except json.JSONDecodeError as exc:
        raise QemuImgError(f"qemu-img {what} printed invalid JSON: {exc}") from None


def qemu_img_info(path: Path, image_format: str) -> dict:
    """Return `qemu-img info --output=json` for path, opened with `-f` as our image_format.

    `-f` makes qemu-img use the declared driver instead of probing the contents; `info` does
    not open backing files (it uses BDRV_O_NO_BACKING), but it does open a qcow2 external data
    file or VMDK extents, which is why inspection checks headers before calling this.
    """
    result = run_qemu_img(
        ["info", "-f", qemu_format(image_format), "--output=json", Path(path).absolute()]
    )
    return _json_of(result, "info")


# `qemu-img check` exits 0 when clean, 1 when the check could not complete, 2 with
# corruptions, 3 with leaks; each of them still prints its JSON report.
_CHECK_REPORTED = frozenset({0, 1, 2, 3})


def qemu_img_check(path: Path, image_format: str) -> dict:
    """Return `qemu-img check --output=json` for path (read-only: no `-r`), under the same
    limits as `info` but more CPU time, as the check walks every L2 table. The report has
    `corruptions`, `leaks` and `check-errors` when there are any."""
    result = run_qemu_img(
        ["check", "-f", qemu_format(image_format), "--output=json", Path(path).absolute()],
        timeout=CHECK_TIMEOUT,
        cpu_seconds=CHECK_CPU_SECONDS,
        ok_returncodes=_CHECK_REPORTED,
    )
    report = _json_of(result, "check")
    report["first-error"] = next(
        (line.strip() for line in result.stderr.splitlines() if line.startswith("ERROR")), ""
    )
    return report


def qemu_img_measure(path: Path, image_format: str, output_format: str) -> dict:
    """Return `qemu-img measure --output=json` (`required`, `fully-allocated`, in bytes) of
    path converted to output_format (qcow2 or raw: the drivers that can measure)."""
    result = run_qemu_img(
        [
            "measure",
            "-f",
            qemu_format(image_format),
            "-O",
            output_format,
            "--output=json",
            Path(path).absolute(),
        ],
        timeout=CHECK_TIMEOUT,
        cpu_seconds=CHECK_CPU_SECONDS,
    )
    return _json_of(result, "measure")


def qemu_img_create_overlay(
    path: Path,
    backing: Path,
    backing_format: str,
    *,
    size: int | None = None,
    timeout: float = 120,
) -> None:
    """Create a qcow2 image at path whose backing file is backing (of our backing_format).

    The backing file is recorded by absolute path with its format (`-F`), so qemu never probes
    it. size (bytes) defaults to the backing file's virtual size.
    """
    args: list[str | os.PathLike[str]] = [
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        Path(backing).absolute(),
        "-F",
        qemu_format(backing_format),
        Path(path).absolute(),
    ]
    if size is not None:
        args.append(str(int(size)))
    run_qemu_img(args, timeout=timeout)


def qemu_img_convert(
    src: Path,
    src_format: str,
    dst: Path,
    dst_format: str,
    *,
    timeout: float = 3600,
    cpu_seconds: int = 3600,
) -> None:
    """Convert src (our src_format) into a new image dst (our dst_format), on disk on return.

    Both formats are named (`-f`, `-O`). The limits are larger than for `info` because a
    conversion is proportional to the image's size, not its header.

    Cache modes, as OpenStack Nova chooses them: qemu-img's default for the destination is
    `unsafe` (flushes ignored: a host crash right after could leave a copy that the catalogue
    calls complete with its tail missing). Where the file systems take O_DIRECT, both sides
    bypass the page cache (`-t none -T none`): flushed on completion, and a 1 GiB copy costs the
    host ~0.15 s of CPU instead of 1.4-2.2 s (measured here), CPU and page cache that belong to
    the host's VMs. Elsewhere the destination is written back and flushed (`-t writeback`).
    """
    run_qemu_img(
        [
            "convert",
            "-q",
            "-t",
            "none" if _direct_io_writable(Path(dst).absolute().parent) else "writeback",
            *(["-T", "none"] if _direct_io_readable(Path(src).absolute()) else []),
            "-f",
            qemu_format(src_format),
            "-O",
            qemu_format(dst_format),
            Path(src).absolute(),
            Path(dst).absolute(),
        ],
        timeout=timeout,
        cpu_seconds=cpu_seconds,
        address_space=CONVERT_ADDRESS_SPACE,
    )


_DIRECT_IO_BLOCK = 4096  # O_DIRECT needs aligned buffers, offsets and sizes; a page is enough


@functools.lru_cache(maxsize=64)
def _direct_io_writable(folder: Path) -> bool:
    """Whether files in folder take O_DIRECT writes (not tmpfs before Linux 6.6, not every FUSE
    or network file system): a one-block probe file, removed again. Once per folder."""
    if not hasattr(os, "O_DIRECT"):
        return False
    probe = folder / f".direct-io-probe-{secrets.token_hex(6)}"
    try:
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_DIRECT, 0o600)
    except OSError:  # where O_DIRECT is refused, the file was created all the same
        probe.unlink(missing_ok=True)
        return False
    try:
        with mmap.mmap(-1, _DIRECT_IO_BLOCK) as aligned:  # anonymous maps are page-aligned
            return os.write(fd, aligned) == _DIRECT_IO_BLOCK
    except OSError:
        return False
    finally:
        os.close(fd)
        probe.unlink(missing_ok=True)


def _direct_io_readable(path: Path) -> bool:
    """Whether this file can be read with O_DIRECT (one aligned block read at its start)."""
    if not hasattr(os, "O_DIRECT"):
        return False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    except OSError:
        return False
    try:
        with mmap.mmap(-1, _DIRECT_IO_BLOCK) as aligned:
            os.preadv(fd, [aligned], 0)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
