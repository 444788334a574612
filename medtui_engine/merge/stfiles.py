"""Safetensors files read and written without loading them: headers, shard layout, streamed writes.

Reading a header costs a few kilobytes of I/O, so the plan (shapes, parameter counts, the disk an
output needs) is known before anything heavy is imported. Writing streams one tensor at a time into
shards whose layout is fixed up front, hashing the bytes as they go out, so a 15 GB model is never
held twice in memory and never re-read to compute its sha256.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"

DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2,
               "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}
# refuse absurd headers (a corrupt or non-safetensors file) before allocating anything
MAX_HEADER = 100 * 1024 * 1024


class SafetensorsError(ValueError):
    pass


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str            # safetensors dtype code: BF16, F16, F32, ...
    shape: tuple[int, ...]
    file: Path
    start: int            # absolute byte offset in the file
    end: int

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def read_header(path: Path) -> tuple[dict, dict[str, TensorInfo]]:
    """(metadata, {name: TensorInfo}) of one safetensors file, from its header alone."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read(8)
            if len(raw) != 8:
                raise SafetensorsError(f"{path} is too short to be a safetensors file")
            (n,) = struct.unpack("<Q", raw)
            if n > MAX_HEADER:
                raise SafetensorsError(f"{path} does not look like a safetensors file (header of {n} bytes)")
            header = json.loads(fh.read(n))
    except OSError as exc:
        raise SafetensorsError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise SafetensorsError(f"{path} has a corrupt safetensors header: {exc}") from None
    base = 8 + n
    meta = header.pop("__metadata__", None) or {}
    tensors = {}
    for name, info in header.items():
        try:
            begin, end = info["data_offsets"]
            tensors[name] = TensorInfo(name, info["dtype"], tuple(info["shape"]), path, base + begin, base + end)
        except (KeyError, TypeError, ValueError):
            raise SafetensorsError(f"{path}: tensor {name!r} has a malformed header entry") from None
    return meta, tensors


def model_weight_files(model_dir: Path) -> list[Path]:
    """The safetensors files holding a model's weights (sharded or single)."""
    model_dir = Path(model_dir)
    index = model_dir / INDEX_FILE
    if index.exists():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError) as exc:
            raise SafetensorsError(f"{index} is unreadable: {exc}") from None
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not (model_dir / f).exists()]
        if missing:
            raise SafetensorsError(f"{model_dir} is incomplete: the index names {', '.join(missing)}, which is missing")
        return [model_dir / f for f in files]
    single = model_dir / SINGLE_FILE
    if single.exists():
        return [single]
    others = sorted(model_dir.glob("*.safetensors"))
    if others:
        return others
    if list(model_dir.glob("*.bin")) or list(model_dir.glob("*.pt")):
        raise SafetensorsError(
            f"{model_dir} holds PyTorch .bin weights only; medtui merges safetensors weights. Convert the "
            "base once (load it with transformers and save_pretrained it) and merge against that copy")
    raise SafetensorsError(f"{model_dir} has no safetensors weights")


def model_tensors(model_dir: Path) -> dict[str, TensorInfo]:
    """Every weight tensor of a model directory, by name, from the headers."""
    tensors: dict[str, TensorInfo] = {}
    for f in model_weight_files(model_dir):
        _, t = read_header(f)
        tensors.update(t)
    return tensors


@dataclass
class ShardPlan:
    """Where each output tensor goes: shard files of about ``max_bytes`` each."""

    names: list[list[str]] = field(default_factory=list)       # per shard, tensor names in order
    dtypes: dict[str, str] = field(default_factory=dict)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def nbytes(self, name: str) -> int:
        n = DTYPE_BYTES[self.dtypes[name]]
        for d in self.shapes[name]:
            n *= d
        return n

    @property
    def total_bytes(self) -> int:
        return sum(self.nbytes(n) for shard in self.names for n in shard)

    def file_names(self) -> list[str]:
        k = len(self.names)
        if k == 1:
            return [SINGLE_FILE]
        return [f"model-{i + 1:05d}-of-{k:05d}.safetensors" for i in range(k)]


def plan_shards(order: list[tuple[str, str, tuple[int, ...]]], max_bytes: int) -> ShardPlan:
    """Cut tensors (name, dtype, shape) into shards in the given order, each at most ``max_bytes``
    (a single larger tensor gets a shard of its own)."""
    plan = ShardPlan()
    current: list[str] = []
    size = 0
    for name, dtype, shape in order:
        plan.dtypes[name] = dtype
        plan.shapes[name] = tuple(shape)
        n = plan.nbytes(name)
        if current and size + n > max_bytes:
            plan.names.append(current)
            current, size = [], 0
        current.append(name)
        size += n
    if current or not plan.names:
        plan.names.append(current)
    return plan


def header_bytes(names: list[str], plan: ShardPlan, metadata: dict | None = None) -> bytes:
    """The header block (length prefix included) for one shard, padded to 8 bytes."""
    header: dict = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for name in names:
        n = plan.nbytes(name)
        header[name] = {"dtype": plan.dtypes[name], "shape": list(plan.shapes[name]),
                        "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


class ShardWriter:
    """Writes one shard sequentially, hashing what it writes (sha256 of the whole file)."""

    def __init__(self, path: Path, names: list[str], plan: ShardPlan, metadata: dict | None = None):
        self.path = Path(path)
        self.names = names
        self.plan = plan
        self.sha = hashlib.sha256()
        self.size = 0
        self._expected = iter(names)
        self._fh = open(self.path, "wb")
        self._write(header_bytes(names, plan, metadata))

    def _write(self, data) -> None:
        view = memoryview(data).cast("B")
        self.sha.update(view)
        self._fh.write(view)
        self.size += len(view)

    def add(self, name: str, chunks) -> None:
        """Write tensor ``name`` from an iterable of bytes-like chunks (in order)."""
        expected = next(self._expected, None)
        if expected != name:
            raise RuntimeError(f"shard {self.path.name}: expected tensor {expected!r}, got {name!r}")
        want = self.plan.nbytes(name)
        got = 0
        for chunk in chunks:
            view = memoryview(chunk).cast("B")
            got += len(view)
            self._write(view)
        if got != want:
            raise RuntimeError(f"tensor {name}: wrote {got} bytes, expected {want}")

    def close(self, fsync: bool = True) -> str:
        if next(self._expected, None) is not None:
            raise RuntimeError(f"shard {self.path.name} closed before all its tensors were written")
        self._fh.flush()
        if fsync:
            os.fsync(self._fh.fileno())
        self._fh.close()
        return self.sha.hexdigest()

    def abort(self) -> None:
        if not self._fh.closed:
            self._fh.close()


def read_raw(info: TensorInfo, chunk: int = 64 << 20):
    """The raw bytes of one tensor, in chunks of at most ``chunk`` bytes (bounded memory)."""
    with open(info.file, "rb") as fh:
        fh.seek(info.start)
        left = info.nbytes
        while left > 0:
            data = fh.read(min(chunk, left))
            if not data:
                raise SafetensorsError(f"{info.file} is truncated (tensor {info.name})")
            left -= len(data)
            yield data


def write_index(out_dir: Path, plan: ShardPlan, metadata: dict | None = None) -> Path | None:
    files = plan.file_names()
    if len(files) == 1:
        return None
    weight_map = {name: files[i] for i, shard in enumerate(plan.names) for name in shard}
    index = {"metadata": {"total_size": plan.total_bytes, **(metadata or {})}, "weight_map": weight_map}
    path = Path(out_dir) / INDEX_FILE
    path.write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return path


def fsync_tree(root: Path, threads: int = 8) -> None:
    """Flush every file under ``root`` (and the directory) to disk, in parallel: done once, before the
    directory is renamed into place, so a power cut cannot leave a complete-looking model of zeros."""
    from concurrent.futures import ThreadPoolExecutor

    def sync(path: Path) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    files = [p for p in Path(root).rglob("*") if p.is_file()]
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(files) or 1))) as pool:
        list(pool.map(sync, files))
    sync(Path(root))


def sha256_file(path: Path, chunk: int = 8 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            data = fh.read(chunk)
            if not data:
                break
            h.update(data)
    return h.hexdigest()
