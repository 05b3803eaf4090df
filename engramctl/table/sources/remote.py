"""Links where the checkpoint lies: rows read from s3://, http(s):// or hf:// objects by range.

``engramctl import URL t.zarr --link`` opens a checkpoint at an fsspec URL
(:func:`open_remote_checkpoint`: ``config.json``, the shard index and each shard's safetensors
header, read by range), records the URL of every shard with its size, ETag (or Last-Modified)
and header hash, and records the block checksums of the Engram tensors
(:mod:`engramctl.table.sources.linkblocks`: the tensors are read once, the rows stay remote).

:class:`RemoteLinkedLayer` serves one layer. A gather turns its rows into the 4 KiB blocks that
hold them (weight and scale tensors), takes those it can from the block cache (``--cache-dir``,
checked when read back), and fetches the others as coalesced byte ranges, all in flight at once
(fsspec ``cat_ranges`` on asynchronous file systems, a thread pool otherwise). Every fetched
block is checked against its CRC-32C before it is cached or served, so bytes of an object
changed since linking are refused, naming the tensor and block; a server that ignores range
requests is refused in one line. Credentials come from the environment (``AWS_*``, ``HF_TOKEN``)
or from the storage options given at import, which are recorded without their secrets.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ...errors import EngramError, UsageError
from ..core.blocksums import crc32c_spans
from ..core.checkpoint import INDEX_NAME, SINGLE_NAME, Checkpoint
from ..core.st_header import MAX_HEADER_BYTES, parse_header
from .linkblocks import BLOCK_BYTES, PARTS, LinkBlockCheck, refuse_nan_scales

log = logging.getLogger(__name__)
RUN_BYTES = 1 << 20  # neighbouring blocks are fetched as one range up to this size
GAP_BLOCKS = 8  # blocks this close share a range (the gap is fetched too): fewer requests
THREADS = 32  # ranges in flight on a file system without an asynchronous cat_ranges
SECRET_KEYS = ("key", "secret", "token", "password", "session_token", "aws_secret_access_key")


def is_remote(name) -> bool:
    """Whether a recorded source is a URL (not a local path)."""
    text = str(name)
    return "://" in text and not text.startswith("file://")


def public_options(options: dict | None) -> dict:
    """Storage options a table may record: every one but credentials."""
    return {k: v for k, v in (options or {}).items() if k.lower() not in SECRET_KEYS}


def file_system(url: str, options: dict | None = None):
    """``(fsspec file system, path)`` of ``url``; a missing protocol package is one line."""
    try:
        import fsspec
    except ImportError:
        raise UsageError(
            f"cannot open {url}: fsspec is not installed (pip install 'engramctl[remote]')"
        ) from None
    try:
        return fsspec.core.url_to_fs(url, **(options or {}))
    except (ImportError, ValueError) as exc:
        hint = " (pip install huggingface_hub)" if url.startswith("hf://") else ""
        hint = hint or " (pip install 'engramctl[remote]')"
        raise UsageError(f"cannot open {url}: {exc}{hint}") from None


def _fetch_error(url: str, exc: BaseException) -> EngramError:
    if isinstance(exc, FileNotFoundError):
        return EngramError(f"{url} does not exist (deleted or moved since linking?)")
    return EngramError(f"cannot read {url}: {exc}")


class RemoteObject:
    """One object (a shard) at a URL: its identity and ranged reads of it."""

    def __init__(self, url: str, options: dict | None = None):
        self.url = url
        self.fs, self.path = file_system(url, options)
        self._pool: ThreadPoolExecutor | None = None

    def identity(self) -> dict:
        """``{"size", "etag"}`` of the object as the server describes it now."""
        try:
            info = self.fs.info(self.path)
        except Exception as exc:  # noqa: BLE001 - any failure of the server: one line
            raise _fetch_error(self.url, exc) from None
        if info.get("partial") is False:
            raise EngramError(
                f"{self.url}: the server refuses range requests (Accept-Ranges: none); a link "
                "needs them: serve the file from a server that honours Range, or copy it locally"
            )
        tag = next(
            (
                info[k]
                for k in ("ETag", "etag", "Last-Modified", "LastModified", "blob_id")
                if info.get(k)
            ),
            None,
        )
        return {"size": int(info["size"]), "etag": str(tag).strip('"') if tag else None}

    def ranges(self, starts: list[int], stops: list[int]) -> list[bytes]:
        """The bytes ``[starts[i], stops[i])``, all requested at once; a reply of another
        length is refused (a server ignoring Range, or an object that changed)."""
        if not starts:
            return []
        try:
            if getattr(self.fs, "async_impl", False):
                data = self.fs.cat_ranges(
                    [self.path] * len(starts), starts, stops, on_error="raise"
                )
            else:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(THREADS, thread_name_prefix="engram-fetch")
                data = list(
                    self._pool.map(
                        lambda ab: self.fs.cat_file(self.path, start=ab[0], end=ab[1]),
                        zip(starts, stops, strict=True),
                    )
                )
        except EngramError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure of the server: one line
            raise _fetch_error(self.url, exc) from None
        for got, a, b in zip(data, starts, stops, strict=True):
            if len(got) > b - a:
                raise EngramError(
                    f"{self.url}: the server ignores range requests (asked for {b - a} bytes, "
                    f"got {len(got)}); a link needs them: serve the file from a server that "
                    "honours Range, or copy it locally"
                )
            if len(got) < b - a:
                raise EngramError(
                    f"{self.url} ended early ({len(got)} of {b - a} bytes at {a}): the object "
                    "changed since linking; import the checkpoint again"
                )
        return data

    def read(self, start: int, nbytes: int) -> bytes:
        return self.ranges([start], [start + nbytes])[0]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


class RemoteCheckpointFiles:
    """The files of a checkpoint directory at a URL (the ``remote`` of a :class:`Checkpoint`)."""

    def __init__(self, url: str, options: dict | None = None):
        self.url, self.options = url.rstrip("/"), options
        self.identities: dict[str, dict] = {}

    def location(self, name: str) -> str:
        return f"{self.url}/{name}"

    def read_all(self, name: str) -> bytes | None:
        """A small file's bytes, ``None`` if it does not exist."""
        fs, path = file_system(self.location(name), self.options)
        try:
            return fs.cat_file(path)
        except FileNotFoundError:
            return None
        except Exception as exc:  # noqa: BLE001
            raise _fetch_error(self.location(name), exc) from None

    def header(self, name: str):
        """A shard's safetensors header (two range reads), its identity remembered."""
        url = self.location(name)
        obj = RemoteObject(url, self.options)
        identity = obj.identity()
        if identity["size"] < 8:
            raise EngramError(f"{url} is not a safetensors file (shorter than 8 bytes)")
        head = obj.read(0, 8)
        length = int.from_bytes(head, "little")
        if length > MAX_HEADER_BYTES or 8 + length > identity["size"]:
            raise EngramError(
                f"{url} is not a safetensors file: header length {length} runs past it"
            )
        header = parse_header(url, identity["size"], head, obj.read(8, length))
        self.identities[url] = identity
        return header


def open_remote_checkpoint(url: str, options: dict | None = None) -> Checkpoint:
    """Open a checkpoint directory at an fsspec URL: config, shard index (or the one
    ``model.safetensors``); shard headers are read as tensors are located."""
    from ...model_config import CONFIG_NAME, read_model_config

    files = RemoteCheckpointFiles(url, options)
    config_bytes = files.read_all(CONFIG_NAME)
    if config_bytes is None:
        raise UsageError(f"{url} has no {CONFIG_NAME}; a checkpoint directory needs one")
    with tempfile.TemporaryDirectory(prefix="engram-config-") as tmp:
        (Path(tmp) / CONFIG_NAME).write_bytes(config_bytes)
        config = read_model_config(Path(tmp) / CONFIG_NAME)
    index = files.read_all(INDEX_NAME)
    if index is not None:
        try:
            weight_map = {str(k): str(v) for k, v in json.loads(index)["weight_map"].items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise EngramError(
                f"{files.location(INDEX_NAME)} is not a safetensors index ({exc!r})"
            ) from None
        for name, shard in weight_map.items():
            if shard.startswith("/") or ".." in shard.split("/"):
                raise EngramError(f"{INDEX_NAME}: shard {shard!r} of {name!r} is outside {url}")
    else:
        header = files.header(SINGLE_NAME)
        weight_map = dict.fromkeys(header.tensors, SINGLE_NAME)
    return Checkpoint(url, config, weight_map, remote=files)


def check_remote_file(
    url: str, record: dict, options: dict | None, tensor: str = ""
) -> RemoteObject:
    """The object at ``url``, refused (naming ``tensor``) when its size, ETag or header
    differ from the link's record."""
    obj = RemoteObject(url, options)
    what = f" (it holds {tensor})" if tensor else ""
    now = obj.identity()
    again = "import the checkpoint again"
    if now["size"] != record["size"]:
        raise EngramError(
            f"remote source {url} changed since linking: {now['size']} bytes, the link recorded "
            f"{record['size']}; {again}{what}"
        )
    if record.get("etag") and now["etag"] != record["etag"]:
        raise EngramError(
            f"remote source {url} changed since linking: its ETag is {now['etag']}, the link "
            f"recorded {record['etag']}; {again}{what}"
        )
    head = obj.read(0, 8)
    length = int.from_bytes(head, "little")
    blob = obj.read(8, length) if 8 + length <= now["size"] else b""
    if hashlib.sha256(head + blob).hexdigest() != record["header_sha256"]:
        raise EngramError(
            f"remote source {url} changed since linking: its safetensors header differs; "
            f"{again}{what}"
        )
    return obj


class BlockCache:
    """Fetched blocks of one tensor kept in a local sparse file (``--cache-dir``). A block is
    written after its check and checked again when read back (a block never fetched reads as
    zeros and fails that check, so no index is needed)."""

    def __init__(self, directory: Path, key: str, nbytes: int):
        self.path = directory / f"{key}.blocks"
        try:
            directory.mkdir(parents=True, exist_ok=True)
            flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
            self.fd = os.open(self.path, flags, 0o644)
            if os.fstat(self.fd).st_size < nbytes:
                os.ftruncate(self.fd, nbytes)
        except OSError as exc:
            raise EngramError(
                f"cannot use the cache directory {directory}: {exc.strerror or exc}; fix it, or "
                "import the link again without --cache-dir"
            ) from None

    def read(self, block: int, nbytes: int) -> bytes:
        return os.pread(self.fd, nbytes, block * BLOCK_BYTES)

    def write(self, block: int, data) -> None:
        os.pwrite(self.fd, data, block * BLOCK_BYTES)

    def close(self) -> None:
        os.close(self.fd)


class RemoteLinkedLayer:
    """One linked layer whose tensors lie at URLs: gathers fetch checked blocks by range."""

    def __init__(self, layer_id, objects, offsets, checks: LinkBlockCheck, caches, dim: int):
        self.layer_id, self.objects, self.offsets = layer_id, objects, offsets
        self.checks, self.caches = checks, caches
        self.widths = (dim, dim // 32)
        self.where = f"{checks.names[1]}"
        self.counters = {"blocks_fetched": 0, "blocks_cached": 0, "ranges": 0}

    @classmethod
    def open(cls, table_path, meta, layer_id: int, *, options=None, cache_dir=None):
        sources = meta.sources
        layer = sources["layers"].get(str(layer_id))
        if layer is None:
            raise EngramError(f"layer {layer_id} has no linked source in the table's metadata")
        checks = LinkBlockCheck.open(table_path, meta, layer_id)
        if checks is None:
            raise EngramError(
                f"layer {layer_id} of {table_path} is linked to {layer['weight']['file']} but has "
                "no block checksums (every remote read is checked against them); run engramctl "
                "verify --add-block-checksums"
            )
        options = {**sources.get("storage_options", {}), **(options or {})}
        objects, offsets, caches = [], [], []
        for part in PARTS:
            entry = layer[part]
            record = sources["files"][entry["file"]]
            tensor = f"{entry['tensor']} of layer {layer_id}"
            objects.append(check_remote_file(entry["file"], record, options, tensor))
            offsets.append(int(entry["offset"]))
            if cache_dir is not None:
                key = hashlib.sha256(
                    f"{entry['file']}|{record['header_sha256']}|{record.get('etag')}|"
                    f"{entry['tensor']}".encode()
                ).hexdigest()[:24]
                caches.append(BlockCache(Path(cache_dir), key, int(entry["nbytes"])))
        return cls(layer_id, objects, offsets, checks, caches or None, meta.dim)

    def check_files(self) -> None:
        """Remote objects are checked at open and every fetched block against its checksum."""

    def _blocks(self, part: int, blocks: np.ndarray) -> np.ndarray:
        """Blocks ``blocks`` (sorted, unique) of tensor ``part``, ``[k, BLOCK_BYTES]``, each
        checked against its CRC-32C (cache first, then fetched)."""
        nbytes = self.checks.nbytes[part]
        out = np.zeros((blocks.size, BLOCK_BYTES), dtype=np.uint8)
        lengths = np.minimum((blocks + 1) * BLOCK_BYTES, nbytes) - blocks * BLOCK_BYTES
        want = self.checks.crcs[part][blocks]
        missing = np.ones(blocks.size, dtype=bool)
        cache = self.caches[part] if self.caches else None
        if cache is not None:
            for i, (b, n) in enumerate(zip(blocks.tolist(), lengths.tolist(), strict=True)):
                data = cache.read(b, n)
                if len(data) == n:
                    out[i, :n] = np.frombuffer(data, np.uint8)
            flat = out.reshape(-1)
            starts = np.arange(blocks.size, dtype=np.int64) * BLOCK_BYTES
            missing = crc32c_spans(flat, starts, starts + lengths) != want
            self.counters["blocks_cached"] += int(blocks.size - missing.sum())
        todo = np.flatnonzero(missing)
        if todo.size:
            self._fetch(part, blocks, todo, lengths, out)
            flat = out.reshape(-1)
            starts = todo * BLOCK_BYTES
            bad = np.flatnonzero(crc32c_spans(flat, starts, starts + lengths[todo]) != want[todo])
            if bad.size:
                block = int(blocks[todo[bad[0]]])
                lo = block * BLOCK_BYTES
                raise EngramError(
                    f"block {block} (bytes {lo}..{lo + int(lengths[todo[bad[0]]]) - 1}) of "
                    f"{self.checks.names[part]} fails its block checksum: the remote object "
                    "changed since linking (or was damaged in transit); nothing of it is served. "
                    "Import the checkpoint again"
                )
            if cache is not None:
                try:
                    for i in todo.tolist():
                        cache.write(int(blocks[i]), out[i, : lengths[i]].tobytes())
                except OSError as exc:  # a full disk: serve on, fetching instead of caching
                    log.warning("not caching fetched blocks in %s: %s", cache.path, exc)
                    self.caches = None
        return out

    def _fetch(self, part, blocks, todo, lengths, out) -> None:
        """Fetch blocks ``blocks[todo]`` into ``out[todo]``: blocks at most ``GAP_BLOCKS`` apart
        share one range (a request costs more than the bytes between), ranges of at most
        ``RUN_BYTES``, all requested at once."""
        ids = blocks[todo].tolist()
        per_run = RUN_BYTES // BLOCK_BYTES
        first, stop, run_of = [], [], []
        for b in ids:
            if first and b - stop[-1] <= GAP_BLOCKS and b + 1 - first[-1] <= per_run:
                stop[-1] = b + 1
            else:
                first.append(b)
                stop.append(b + 1)
            run_of.append(len(first) - 1)
        base, nbytes = self.offsets[part], self.checks.nbytes[part]
        starts = [base + f * BLOCK_BYTES for f in first]
        stops = [base + min(e * BLOCK_BYTES, nbytes) for e in stop]
        data = [np.frombuffer(d, np.uint8) for d in self.objects[part].ranges(starts, stops)]
        self.counters["ranges"] += len(starts)
        self.counters["blocks_fetched"] += len(ids)
        for i, (b, r) in enumerate(zip(ids, run_of, strict=True)):
            at = (b - first[r]) * BLOCK_BYTES
            n = int(lengths[todo[i]])
            out[todo[i], :n] = data[r][at : at + n]

    def gather(self, row_ids: np.ndarray, out: np.ndarray, cold=None) -> np.ndarray:
        """Rows ``row_ids`` (range-checked) into ``out`` (``[n, dim + dim/32]`` uint8)."""
        ids = np.asarray(row_ids, dtype=np.int64)
        col = 0
        for part, width in enumerate(self.widths):
            if ids.size:
                first = ids * width // BLOCK_BYTES
                blocks = np.unique(np.r_[first, (ids * width + width - 1) // BLOCK_BYTES])
                flat = self._blocks(part, blocks).reshape(-1)
                at = (
                    np.searchsorted(blocks, first) * BLOCK_BYTES + ids * width - first * BLOCK_BYTES
                )
                out[:, col : col + width] = flat[at[:, None] + np.arange(width)]
            col += width
        refuse_nan_scales(out, self.widths[0], ids, 0, self.layer_id, self.where)
        return out

    def rows(self, start: int, stop: int) -> np.ndarray:
        out = np.empty((stop - start, sum(self.widths)), dtype=np.uint8)
        return self.gather(np.arange(start, stop, dtype=np.int64), out)

    def close(self) -> None:
        for obj in self.objects:
            obj.close()
        for cache in self.caches or ():
            cache.close()


__all__ = [
    "BlockCache",
    "RemoteCheckpointFiles",
    "RemoteLinkedLayer",
    "RemoteObject",
    "check_remote_file",
    "file_system",
    "is_remote",
    "open_remote_checkpoint",
    "public_options",
]
