"""Where datasets live, and atomic, verified downloads of their files.

Every dataset file archlab reads is described by a :class:`RemoteFile`: its name, the URLs it can be
fetched from (tried in order) and its sha256. :func:`ensure_files` makes a dataset folder complete:
missing files are downloaded, present ones are verified once per process. A download streams into a
temporary file in the destination folder, is flushed to disk, verified, and only then renamed into
place, so an interrupted or corrupted download never leaves a file that looks finished.

When a file can be neither found nor downloaded (no network, a checksum that does not match), the
user gets :class:`~archlab.errors.DataUnavailable` with one line naming the dataset, the missing
files and the folder to put them in.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import ArchlabError, DataUnavailable
from ..io import file_mode

#: Seconds to wait for a server to answer (connect and each read); short so that an offline
#: machine fails fast instead of hanging on every mirror.
TIMEOUT_S = 10.0
_CHUNK = 1 << 20


def data_root() -> Path:
    """The folder that holds one sub-folder per dataset.

    ``$ARCHLAB_DATA`` when set, else the user cache: ``$XDG_CACHE_HOME/archlab`` or
    ``~/.cache/archlab``. Read on every call, so tests and users can change it at run time.
    """
    env = os.environ.get("ARCHLAB_DATA")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME")
    base = Path(cache).expanduser() if cache else Path.home() / ".cache"
    return base / "archlab"


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset.

    ``sha256`` is the digest of the file's content; with ``gunzip=True`` it is the digest of the
    *decompressed* content. That lets any gzip wrapper of the same data pass (mirrors and local copies
    re-compress files, which changes the ``.gz`` bytes but not the data).
    """

    name: str
    urls: tuple[str, ...]
    sha256: str
    gunzip: bool = False


def file_sha256(path: Path, gunzip: bool = False) -> str:
    """Hex sha256 of a file's bytes (of its decompressed bytes with ``gunzip=True``).

    A file that is not valid gzip when ``gunzip=True`` raises ``OSError`` (``gzip.BadGzipFile``) or
    ``EOFError``.
    """
    digest = hashlib.sha256()
    opener = gzip.open if gunzip else open
    with opener(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_matches(path: Path, sha256: str, gunzip: bool = False) -> bool:
    """Whether ``path`` has the expected digest; unreadable or corrupt files simply do not match."""
    try:
        return file_sha256(path, gunzip) == sha256.lower()
    except (OSError, EOFError):
        return False


# Files already verified in this process, keyed by (path, size, mtime): a file that is replaced or
# touched is verified again, an unchanged one is hashed once (hashing MNIST costs ~0.3 s).
_verified: set[tuple[str, int, int, str]] = set()


def _stamp(path: Path, sha256: str) -> tuple[str, int, int, str]:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns, sha256)


def verify_file(file: RemoteFile, path: Path) -> bool:
    """Whether the file at ``path`` has ``file``'s checksum (cached per process)."""
    stamp = _stamp(path, file.sha256)
    if stamp in _verified:
        return True
    ok = sha256_matches(path, file.sha256, file.gunzip)
    if ok:
        _verified.add(stamp)
    return ok


class _FetchFailed(Exception):
    """Internal: every URL failed; the message says why (last reason)."""


def _download_to(url: str, tmp: Path, timeout: float) -> None:
    # Some servers reject urllib's default user agent with 403.
    request = urllib.request.Request(url, headers={"User-Agent": "archlab"})
    with urllib.request.urlopen(request, timeout=timeout) as response, open(tmp, "wb") as out:
        while chunk := response.read(_CHUNK):
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())


def _try_urls(urls: list[str] | tuple[str, ...], dest: Path, verify: Callable[[Path], bool], timeout: float) -> None:
    """Download ``dest`` from the first URL that works and verifies; raise _FetchFailed otherwise."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _FetchFailed(f"cannot create the folder: {exc.strerror}") from None
    reasons = []
    for url in urls:
        try:
            fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        except OSError as exc:
            raise _FetchFailed(f"cannot write to the folder: {exc.strerror}") from None
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            _download_to(url, tmp, timeout)
            if not verify(tmp):
                reasons.append(f"{url}: checksum mismatch")
                continue
            os.chmod(tmp, file_mode())
            os.replace(tmp, dest)  # atomic on POSIX and Windows within one folder
            return
        except urllib.error.HTTPError as exc:
            reasons.append(f"{url}: HTTP {exc.code}")
        # URLError and connection resets are OSErrors; HTTPException: a broken response
        # (e.g. IncompleteRead); ValueError: a malformed URL.
        except (OSError, http.client.HTTPException, ValueError) as exc:
            reasons.append(f"{url}: {getattr(exc, 'reason', exc)}")
        finally:
            tmp.unlink(missing_ok=True)  # after a successful os.replace there is nothing to remove
    if not reasons:
        raise _FetchFailed("no URL known")
    more = f" (and {len(reasons) - 1} other URL(s) failed)" if len(reasons) > 1 else ""
    raise _FetchFailed(f"download failed: {reasons[-1]}{more}")


def _unavailable(dataset: str, names: list[str], folder: Path, why: str) -> DataUnavailable:
    files = ", ".join(names)
    return DataUnavailable(
        f"dataset {dataset!r}: cannot get {files} ({why}); put the file(s) in {folder} "
        f"(or set ARCHLAB_DATA to a folder with a {dataset}/ sub-folder that has them)"
    )


def _sha256_check(sha256: str, gunzip: bool) -> Callable[[Path], bool]:
    return lambda path: sha256_matches(path, sha256, gunzip)


def fetch(
    urls: list[str] | tuple[str, ...],
    dest: Path,
    verify: Callable[[Path], bool] | None = None,
    *,
    sha256: str | None = None,
    dataset: str | None = None,
    timeout: float = TIMEOUT_S,
) -> Path:
    """Download ``dest`` from the first of ``urls`` that answers with content that verifies.

    Exactly one of ``verify`` (called with the downloaded temporary file, returns whether it is good)
    or ``sha256`` (of the raw bytes) must be given. Each attempt streams into a temporary file next
    to ``dest``, fsyncs it, verifies it and renames it over ``dest``; a failed attempt deletes its
    temporary file, so ``dest`` is either absent or complete and verified.

    Raises DataUnavailable (one line naming ``dataset`` -- default: the folder's name -- the file and
    the folder) when no URL gives a file that verifies.
    """
    if (verify is None) == (sha256 is None):
        raise TypeError("fetch() needs exactly one of verify= or sha256=")
    dest = Path(dest)
    check = verify if verify is not None else _sha256_check(str(sha256), gunzip=False)
    try:
        _try_urls(urls, dest, check, timeout)
    except _FetchFailed as exc:
        raise _unavailable(dataset or dest.parent.name, [dest.name], dest.parent, str(exc)) from None
    return dest


def ensure_files(
    dataset: str, files: list[RemoteFile] | tuple[RemoteFile, ...], folder: Path, download: bool = True
) -> list[Path]:
    """Make ``folder`` hold every file in ``files``, verified; return their paths in order.

    Present files are verified (once per process) and refused with ArchlabError when their checksum
    does not match; they are left untouched, since they are the user's. Missing files are downloaded
    (unless ``download=False``). If a download fails, the remaining missing files are not tried (the
    network is most likely down) and one DataUnavailable line names all of them.
    """
    folder = Path(folder)
    paths = [folder / f.name for f in files]
    for file, path in zip(files, paths, strict=True):
        if path.exists() and not verify_file(file, path):
            content = " of the decompressed content" if file.gunzip else ""
            raise ArchlabError(
                f"dataset {dataset!r}: checksum mismatch for {path} (its sha256{content} should be "
                f"{file.sha256}); delete or replace the file"
            )
    missing = [(f, p) for f, p in zip(files, paths, strict=True) if not p.exists()]
    if missing and not download:
        raise _unavailable(dataset, [f.name for f, _ in missing], folder, "downloads are switched off")
    for i, (file, path) in enumerate(missing):
        try:
            _try_urls(file.urls, path, _sha256_check(file.sha256, file.gunzip), TIMEOUT_S)
        except _FetchFailed as exc:
            raise _unavailable(dataset, [f.name for f, _ in missing[i:]], folder, str(exc)) from None
        _verified.add(_stamp(path, file.sha256))  # fetched files are verified before they land
    return paths
