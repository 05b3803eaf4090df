"""Where a table's files live: a local directory or an fsspec URL (``s3://bucket/t.zarr``).

:func:`open_store` gives a :class:`LocalStore` for a path and an :class:`FsspecStore` for a URL.
Both read and write files by *key*, the path inside the table (``zarr.json``,
``layer_1/c/0/0``), so the table code above them does not care where the bytes are. Writes are
atomic either way: a temporary file renamed into place locally, one PUT of the whole object in an
object store. Stores pickle small (a URL and its storage options), which is what Dask tasks need.

A store states what it can do (zarr-python's habit) instead of callers asking where it is:
``supports_mmap`` (chunk files can be memory-mapped: :meth:`TableStore.map_or_read`),
``supports_writes`` (rows can be rewritten in place under the writer lock, ``mode="r+"``;
:meth:`TableStore.check_writable` is the one refusal) and :meth:`TableStore.get_many` (several
files at once, fetched concurrently where the store can).

Errors of a remote store (its protocol package not installed, no credentials, access denied, an
unreachable endpoint) become one :class:`EngramError` line naming what is missing;
``FileNotFoundError`` passes through so callers can treat a missing file as they would locally.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import shutil
from pathlib import Path

from ..._files import write_file_atomic
from ...errors import EngramError, UsageError

CREDENTIAL_ADVICE = (
    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or the store's own variables), or pass "
    "--storage-option key=... --storage-option secret=..."
)


def is_url(location) -> bool:
    """True for an fsspec URL other than a plain local path.

    >>> is_url("s3://bucket/t.zarr"), is_url("t.zarr"), is_url("file:///tmp/t.zarr")
    (True, False, False)
    """
    text = str(location)
    return "://" in text and not text.startswith("file://")


def _parse_value(text: str):
    """``"3"`` -> 3, ``"true"`` -> True, ``'{"a": 1}'`` -> dict; anything else stays a string."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, (int, float, dict, list)) else text


def parse_storage_options(items: list[str] | None) -> dict:
    """``["endpoint_url=http://h:9000", "client_kwargs.region_name=eu"]`` -> nested dict.

    >>> parse_storage_options(["anon=true", "client_kwargs.region_name=eu-west-1"])
    {'anon': True, 'client_kwargs': {'region_name': 'eu-west-1'}}
    """
    options: dict = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--storage-option: expected KEY=VALUE, got {item!r}")
        *parents, leaf = key.strip().split(".")
        target = options
        for part in parents:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise UsageError(f"--storage-option: {key!r} conflicts with an earlier option")
        target[leaf] = _parse_value(value.strip())
    return options


# ------------------------------------------------------------------------------- stores
class TableStore:
    """The files of one table, addressed by key. Subclasses: local directory, fsspec URL."""

    url: str
    is_local: bool
    supports_mmap: bool  # chunk files can be memory-mapped (map_or_read)
    supports_writes: bool  # rows can be rewritten in place under the writer lock (mode "r+")

    @property
    def location(self):
        """The table's path (a :class:`~pathlib.Path`) or, for a remote table, its URL."""
        return self.url

    def location_of(self, key: str):
        """Where ``key`` lives: a :class:`~pathlib.Path` locally, a URL string remotely."""
        return self.where(key)

    def check_writable(self) -> None:
        """Refuse to open the table for writing rows unless the store ``supports_writes``."""
        if not self.supports_writes:
            raise EngramError(
                f"{self.url}: a table in an object store has no writable place for commits; "
                "give a local directory for them: --commits-dir DIR (open_table(..., "
                "commits_dir=DIR)); the base stays as it is"
            )

    def where(self, key: str = "") -> str:
        """Full path or URL of ``key``, for messages."""
        return f"{self.url.rstrip('/')}/{key}" if key else self.url

    def exists(self) -> bool:
        raise NotImplementedError

    def is_empty(self) -> bool:
        raise NotImplementedError

    def read_bytes(self, key: str) -> bytes:
        raise NotImplementedError

    def map_or_read(self, key: str, mappable_size: int | None = None):
        """A file's bytes; memory-mapped instead if the store ``supports_mmap`` and the file is
        exactly ``mappable_size`` long."""
        return self.read_bytes(key)

    def get_many(self, keys: list[str]) -> dict[str, bytes | None]:
        """Several files at once (``None`` for missing ones); remote stores fetch concurrently."""
        out: dict[str, bytes | None] = {}
        for key in keys:
            try:
                out[key] = self.read_bytes(key)
            except FileNotFoundError:
                out[key] = None
        return out

    def write_bytes(self, key: str, data, *, fsync: bool = True) -> None:
        """Write a whole file atomically; ``fsync=False`` leaves a local file to the page cache
        (an object store's PUT is durable when it returns)."""
        raise NotImplementedError

    def file_sizes(self, prefix: str) -> dict[str, int]:
        """``{key relative to prefix: size}`` of every file under ``prefix``."""
        raise NotImplementedError

    def remove(self) -> None:
        raise NotImplementedError

    def zarr_location(self):
        """What ``zarr.open_group`` takes as its store."""
        raise NotImplementedError


class LocalStore(TableStore):
    """A table directory on a local (or shared, mounted) file system."""

    is_local = True
    supports_mmap = True
    supports_writes = True

    def __init__(self, path):
        self.root = Path(path)
        self.url = str(self.root)

    @property
    def location(self) -> Path:
        return self.root

    def location_of(self, key: str) -> Path:
        return self.root / key

    def exists(self) -> bool:
        return self.root.exists()

    def is_empty(self) -> bool:
        return self.root.is_dir() and not any(self.root.iterdir())

    def read_bytes(self, key: str) -> bytes:
        return (self.root / key).read_bytes()

    def map_or_read(self, key: str, mappable_size: int | None = None):
        with open(self.root / key, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if mappable_size and size == mappable_size:
                return mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
            return handle.read()

    def write_bytes(self, key: str, data, *, fsync: bool = True) -> None:
        write_file_atomic(self.root / key, data, fsync=fsync)

    def file_sizes(self, prefix: str) -> dict[str, int]:
        base = self.root / prefix
        sizes = {}
        for root, _dirs, files in os.walk(base):
            for name in files:
                with contextlib.suppress(FileNotFoundError):  # a rename under way
                    full = Path(root, name)
                    sizes[full.relative_to(base).as_posix()] = full.stat().st_size
        return sizes

    def remove(self) -> None:
        try:
            shutil.rmtree(self.root)
        except OSError as exc:
            raise EngramError(f"cannot remove {self.root}: {exc.strerror or exc}") from exc

    def zarr_location(self):
        return str(self.root)

    def __repr__(self) -> str:
        return f"LocalStore({self.url!r})"


class FsspecStore(TableStore):
    """A table under an fsspec URL (``s3://``, ``gs://``, ``memory://`` ...)."""

    is_local = False
    supports_mmap = False
    supports_writes = False

    def __init__(self, url: str, storage_options: dict | None = None):
        self.url = url.rstrip("/")
        self.storage_options = dict(storage_options or {})
        self._fs = None
        self._root = ""
        self.protocol = self.url.split("://", 1)[0]

    def __getstate__(self) -> dict:  # ship the URL and options, not a live connection
        return {"url": self.url, "storage_options": self.storage_options}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["url"], state["storage_options"])

    def __repr__(self) -> str:
        return f"FsspecStore({self.url!r})"

    @property
    def fs(self):
        if self._fs is None:
            with self._errors():
                try:
                    import fsspec
                except ImportError:
                    raise EngramError(
                        f"{self.url}: fsspec URLs need fsspec: pip install 'engramctl[dask]'"
                    ) from None
                self._fs, self._root = fsspec.core.url_to_fs(self.url, **self.storage_options)
        return self._fs

    def _path(self, key: str = "") -> str:
        fs = self.fs
        return f"{self._root.rstrip('/')}/{key}" if key else self._root or fs.root_marker

    @contextlib.contextmanager
    def _errors(self):
        """Turn a remote store's failures into one line naming what is missing."""
        try:
            yield
        except (FileNotFoundError, EngramError):
            raise
        except ImportError as exc:
            raise EngramError(
                f"{self.url}: the {self.protocol}:// protocol needs a package that is not "
                f"installed ({exc}); install it on this machine and on every worker"
            ) from None
        except ValueError as exc:
            if "protocol" in str(exc).lower():
                raise EngramError(f"{self.url}: unknown URL protocol {self.protocol!r}") from None
            raise
        except PermissionError as exc:
            raise EngramError(
                f"{self.url}: access denied ({exc}); check the credentials: {CREDENTIAL_ADVICE}"
            ) from None
        except TypeError as exc:  # an option the file system does not take
            raise EngramError(f"{self.url}: bad --storage-option ({exc})") from None
        except Exception as exc:
            name = type(exc).__name__
            if "Credential" in name:
                raise EngramError(
                    f"{self.url}: no credentials found for {self.protocol}:// ({exc}); "
                    f"{CREDENTIAL_ADVICE}"
                ) from None
            if "Connect" in name or isinstance(exc, (ConnectionError, TimeoutError)):
                raise EngramError(
                    f"{self.url}: cannot reach the storage endpoint ({exc}); check "
                    "--storage-option endpoint_url=... / AWS_ENDPOINT_URL"
                ) from None
            raise

    def exists(self) -> bool:
        with self._errors():
            return bool(self.fs.exists(self._path()))

    def is_empty(self) -> bool:
        with self._errors():
            return not self.fs.find(self._path())

    def read_bytes(self, key: str) -> bytes:
        with self._errors():
            return self.fs.cat_file(self._path(key))

    def get_many(self, keys: list[str]) -> dict[str, bytes | None]:
        paths = {self._path(key): key for key in keys}
        with self._errors():
            found = self.fs.cat(list(paths), on_error="return")
        out: dict[str, bytes | None] = {}
        for path, key in paths.items():
            data = found.get(path)
            if isinstance(data, FileNotFoundError):
                data = None
            elif isinstance(data, BaseException):
                with self._errors():
                    raise data
            out[key] = data
        return out

    def write_bytes(self, key: str, data, *, fsync: bool = True) -> None:
        try:
            with self._errors():
                self.fs.pipe_file(self._path(key), bytes(memoryview(data).cast("B")))
        except FileNotFoundError as exc:  # the bucket (container) itself is missing
            raise EngramError(f"cannot write {self.where(key)} ({exc}); create it first") from None

    def file_sizes(self, prefix: str) -> dict[str, int]:
        base = self._path(prefix).rstrip("/")
        with self._errors():
            found = self.fs.find(base, detail=True)
        return {
            path[len(base) + 1 :]: int(info.get("size") or 0)
            for path, info in found.items()
            if info.get("type", "file") == "file" and path.startswith(base + "/")
        }

    def remove(self) -> None:
        with self._errors():
            self.fs.rm(self._path(), recursive=True)

    def zarr_location(self):
        from zarr.storage import FsspecStore as ZarrFsspecStore

        with self._errors():
            return ZarrFsspecStore.from_url(self.url, storage_options=self.storage_options)


def open_store(location, storage_options: dict | None = None) -> TableStore:
    """The store of a table: a :class:`TableStore` as is, a URL or a local path.

    Parameters
    ----------
    location : str, Path or TableStore
        ``s3://bucket/t.zarr`` (any fsspec protocol), ``file:///tmp/t.zarr`` or a local path.
    storage_options : dict, optional
        Passed to the fsspec file system (``endpoint_url``, ``key``, ``secret``, ``anon`` ...).
    """
    if isinstance(location, TableStore):
        return location
    text = str(location)
    if is_url(text):
        return FsspecStore(text, storage_options)
    if storage_options:
        raise UsageError(
            f"--storage-option applies to fsspec URLs (s3://...), not to the local path {text}"
        )
    return LocalStore(text[len("file://") :] if text.startswith("file://") else location)


__all__ = [
    "TableStore",
    "LocalStore",
    "FsspecStore",
    "open_store",
    "is_url",
    "parse_storage_options",
]
