"""Read the learned prompt context out of a Dassl checkpoint without running pickled code.

Dassl (used by BiomedCoOp and the reference Biomed-DPT code) saves ``model.pth.tar-N`` files
with ``torch.save({"state_dict": ..., "epoch": ..., "optimizer": ..., "scheduler": ...})``.
A pickle may name any global (``os.system``, ``builtins.eval``, a scheduler class, ...) and
unpickling would import and call it. So we never call ``torch.load``: we open torch's zip
container ourselves and unpickle ``data.pkl`` with an explicit allowlist.

* Tensor rebuild functions map to our own functions that build a lazy tensor *record*;
  the storage bytes are read from ``<archive>/data/<key>`` only for the tensor we return,
  so whole-model checkpoints stay cheap and ``list_tensors`` reads no tensor data at all.
* ``collections.OrderedDict`` and the ``torch.*Storage`` type names (mapped to dtypes) are
  the only other real things handed to the unpickler.
* Every other global becomes an inert ``Opaque`` placeholder that only records its name and
  arguments: nothing is imported, nothing real is called.

The legacy (pre-1.6, non-zip) format is refused: reading it needs the same unpickling
machinery plus a different storage layout, and those files are rare today.
"""
from __future__ import annotations

import io
import logging
import os
import pickle
import sys
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch

from .errors import InputError

logger = logging.getLogger(__name__)

__all__ = ["CheckpointFormatError", "UnsafeCheckpointError", "Opaque", "read_dassl_context", "list_tensors"]

# Dassl's prompt learners: CoOp-style `prompt_learner.ctx`, BiomedCoOp's bare `ctx`, DataParallel.
_PREFERRED_KEYS = ("prompt_learner.ctx", "ctx", "module.prompt_learner.ctx")
_MAX_KEYS_IN_ERRORS = 20
# Every member is read with a cap before it is parsed: a tiny file must not inflate into
# gigabytes ("decompression bomb"). data.pkl holds only metadata (a whole Dassl model's is
# well under a megabyte); a prompt context is kilobytes, a whole-model storage is never read.
MAX_PICKLE_BYTES = 16 * 2**20
MAX_STORAGE_BYTES = 256 * 2**20
_MAX_SMALL_BYTES = 64  # the "byteorder" record
_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool, "ComplexFloatStorage": torch.complex64,
    "ComplexDoubleStorage": torch.complex128, "UntypedStorage": torch.uint8,
}


class CheckpointFormatError(InputError):
    """The file is not a readable torch zip checkpoint, or holds no usable prompt context."""


class UnsafeCheckpointError(InputError):
    """Data we need is built by a non-allowlisted global, i.e. only code execution could produce it."""


class Opaque:
    """Inert stand-in for any non-allowlisted global and for whatever "calling" it produced.

    ``find_class`` returns a fresh subclass per global name (a class, because the NEWOBJ
    opcode requires one); "calling" it only stores the name and arguments (``__new__``;
    object.__init__ accepts the extra arguments because __new__ is overridden).
    """

    __slots__ = ("name", "args", "state", "items")
    _global_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> Opaque:
        self = object.__new__(cls)
        self.name, self.args, self.state, self.items = cls._global_name, (args, kwargs), None, []
        return self

    # The pickle opcodes BUILD / APPEND(S) / SETITEMS may target the object: just record.
    def __setstate__(self, state: Any) -> None:
        self.state = state

    def append(self, item: Any) -> None:
        self.items.append(item)

    def extend(self, items: Any) -> None:
        self.items.extend(items)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items.append((key, value))

    def __repr__(self) -> str:
        return f"Opaque({self.name!r})"


class _StorageRef:
    """A storage named by a persistent id; bytes stay in the zip until a tensor is materialized."""

    def __init__(self, key: str, dtype: torch.dtype, numel: int) -> None:
        self.key, self.dtype, self.numel = key, dtype, numel

    def __setstate__(self, state: Any) -> None:  # a pickle must not rewrite our own records
        raise pickle.UnpicklingError("unexpected state for a tensor storage")


class _LazyTensor:
    """What ``torch._utils._rebuild_tensor_v2`` would build, as plain metadata."""

    def __init__(self, storage: Any, offset: Any, size: Any, stride: Any) -> None:
        if not isinstance(storage, _StorageRef):
            raise UnsafeCheckpointError(f"tensor rebuilt from a non-storage object: {storage!r}")
        ints = [offset, *size, *stride]
        if not all(isinstance(v, int) and v >= 0 for v in ints) or len(size) != len(stride):
            raise CheckpointFormatError(f"invalid tensor geometry: size={size!r} stride={stride!r}")
        self.storage, self.offset, self.shape, self.stride = storage, offset, tuple(size), tuple(stride)

    def __setstate__(self, state: Any) -> None:
        raise pickle.UnpicklingError("unexpected state for a tensor")

    def materialize(self, zf: zipfile.ZipFile, prefix: str, byteorder: str) -> torch.Tensor:
        ref, dtype = self.storage, self.storage.dtype
        name, nbytes = f"{prefix}data/{ref.key}", ref.numel * dtype.itemsize
        try:
            # Check the declared size first: never inflate an entry bigger than the pickle promised.
            if zf.getinfo(name).file_size != nbytes:
                raise CheckpointFormatError(f"storage {ref.key!r} does not hold {ref.numel} {dtype} values")
            raw = read_member(zf, name, min(nbytes, MAX_STORAGE_BYTES))
        except KeyError:
            raise CheckpointFormatError(f"storage {ref.key!r} is missing from the archive") from None
        except zipfile.BadZipFile as exc:  # e.g. CRC mismatch: the file is damaged
            raise CheckpointFormatError(f"storage {ref.key!r} is corrupt ({exc})") from exc
        flat = torch.frombuffer(bytearray(raw), dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        unit = dtype.itemsize // 2 if dtype.is_complex else dtype.itemsize  # complex: swap each half
        if byteorder != sys.byteorder and unit > 1:
            flat = flat.view(torch.uint8).view(-1, unit).flip(-1).contiguous().view(dtype).view(-1)
        # Bounds check ourselves so a corrupt file gives our error, not a torch RuntimeError.
        end = self.offset + sum((n - 1) * s for n, s in zip(self.shape, self.stride)) + 1
        if 0 not in self.shape and end > flat.numel():
            raise CheckpointFormatError(f"tensor view exceeds its storage {ref.key!r}")
        return torch.as_strided(flat, self.shape, self.stride, self.offset)


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *_ignored: Any) -> _LazyTensor:
    # Covers _rebuild_tensor and _rebuild_tensor_v2; requires_grad, hooks and metadata are dropped.
    return _LazyTensor(storage, offset, size, stride)


def _rebuild_parameter(data: Any, *_ignored: Any) -> Any:
    return data  # a Parameter is just its data here; hooks/state are never run


def _rebuild_from_type_v2(func: Any, _new_type: Any, args: Any, _state: Any) -> Any:
    # `func` came out of our own find_class, so it is one of our stand-ins, never a real global.
    return func(*args)


class _Stub:
    """Fresh callable per lookup, so a pickle's BUILD opcode cannot tamper with our shared functions."""

    __slots__ = ("_fn",)

    def __init__(self, fn: Any) -> None:
        self._fn = fn

    def __call__(self, *args: Any) -> Any:
        return self._fn(*args)

    def __setstate__(self, state: Any) -> None:
        raise pickle.UnpicklingError("unexpected state for an allowlisted function")


class _StorageType:
    """Stand-in for ``torch.FloatStorage`` & co.: only carries the dtype."""

    __slots__ = ("dtype",)

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype

    def __setstate__(self, state: Any) -> None:
        raise pickle.UnpicklingError("unexpected state for a storage type")


_ALLOWED_FUNCS: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler whose globals are an allowlist of stand-ins; everything else becomes Opaque."""

    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data))
        self.opaque_globals: set[str] = set()

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict  # an immutable C type: BUILD/setattr on it fail harmlessly
        if (module, name) in _ALLOWED_FUNCS:
            return _Stub(_ALLOWED_FUNCS[module, name])
        if module in ("torch", "torch.cuda") and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        full = f"{module}.{name}"
        self.opaque_globals.add(full)
        return type("OpaqueGlobal", (Opaque,), {"__slots__": (), "_global_name": full})

    def persistent_load(self, pid: Any) -> _StorageRef:
        # torch's zip format: ("storage", storage_type, key, location, numel); location is ignored
        # because every tensor is materialized on the CPU.
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise CheckpointFormatError(f"unsupported persistent id in data.pkl: {pid!r}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise UnsafeCheckpointError(f"storage of non-allowlisted type {storage_type!r}")
        if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
            raise CheckpointFormatError(f"malformed storage reference: {pid!r}")
        return _StorageRef(key, storage_type.dtype, numel)


def read_member(zf: zipfile.ZipFile, name: str, cap: int) -> bytes:
    """A member's bytes, refused when its declared or actual size is over ``cap``.

    The declared size is checked first; the stream is then read for at most ``cap + 1``
    bytes, so a header that lies about the size cannot make us inflate more.
    """
    if zf.getinfo(name).file_size > cap:
        raise CheckpointFormatError(f"{name.rsplit('/', 1)[-1]} is larger than the {cap // 2**20 or 1} MB this "
                                    "reader accepts for it (a checkpoint does not need that much)")
    with zf.open(name) as fh:
        data = fh.read(cap + 1)
    if len(data) > cap:
        raise CheckpointFormatError(f"{name.rsplit('/', 1)[-1]} unpacks to more than it declares")
    return data


def _name(path: str | os.PathLike) -> str:
    # Messages name the file, never its folder: they may reach a visitor, and paths are the server's.
    return os.path.basename(os.fspath(path))


def _open(path: str | os.PathLike) -> tuple[zipfile.ZipFile, str, Any]:
    """Open the archive and unpickle data.pkl; returns (zip, entry prefix, top-level object)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointFormatError(f"{_name(path) or path}: no such file (a Dassl checkpoint is one .pth.tar file)")
    with open(path, "rb") as fh:
        head = fh.read(4)
    if not zipfile.is_zipfile(path):
        if head[:1] == b"\x80":  # legacy torch.save starts with a raw pickle (protocol opcode)
            raise CheckpointFormatError(f"{_name(path)}: legacy (pre-1.6, non-zip) torch checkpoint is not supported; "
                                        "re-save it with a recent torch in an environment you trust")
        raise CheckpointFormatError(f"{_name(path)}: not a PyTorch zip checkpoint")
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise CheckpointFormatError(f"{_name(path)}: corrupt zip archive ({exc})") from exc
    try:
        pkls = [n for n in zf.namelist() if n == "data.pkl" or (n.endswith("/data.pkl") and n.count("/") == 1)]
        if len(pkls) != 1:
            raise CheckpointFormatError(f"{_name(path)}: expected one <archive>/data.pkl, found {len(pkls)}")
        prefix = pkls[0][: -len("data.pkl")]
        unpickler = _RestrictedUnpickler(read_member(zf, pkls[0], MAX_PICKLE_BYTES))
        try:
            obj = unpickler.load()
        except (CheckpointFormatError, UnsafeCheckpointError):
            raise
        except Exception as exc:  # malformed pickle: surface as a format error, keep the cause
            raise CheckpointFormatError(f"{_name(path)}: cannot parse data.pkl ({exc})") from exc
        if unpickler.opaque_globals:
            logger.warning("%s references non-allowlisted globals, kept inert (not imported or run): %s",
                           _name(path), ", ".join(sorted(unpickler.opaque_globals)))
        return zf, prefix, obj
    except BaseException:
        zf.close()
        raise


def _state_dict(obj: Any, path: str | os.PathLike) -> Mapping:
    # Dassl wraps the weights in {"state_dict": ...}; a bare state dict is accepted as well.
    sd = obj.get("state_dict", obj) if isinstance(obj, Mapping) else obj
    if isinstance(sd, Opaque):
        raise UnsafeCheckpointError(f"{_name(path)}: state_dict is built by non-allowlisted {sd.name}")
    if not isinstance(sd, Mapping):
        raise CheckpointFormatError(f"{_name(path)}: no state_dict mapping (got {type(sd).__name__})")
    return sd


def list_tensors(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the tensors in the checkpoint's state_dict (no tensor data is read)."""
    zf, _, obj = _open(path)
    with zf:
        return {str(k): v.shape for k, v in _state_dict(obj, path).items() if isinstance(v, _LazyTensor)}


def _check_context(key: str, t: _LazyTensor) -> None:
    if not t.storage.dtype.is_floating_point:
        raise CheckpointFormatError(f"{key!r} has dtype {t.storage.dtype}, expected a floating-point context")
    if len(t.shape) == 3:
        kind = "a batched [1, n_ctx, dim]" if t.shape[0] == 1 else "a class-specific [n_cls, n_ctx, dim]"
        raise CheckpointFormatError(f"{key!r} has shape {list(t.shape)}: {kind} context is not supported; "
                                    "only a shared [n_ctx, dim] context can be imported")
    if len(t.shape) != 2:
        raise CheckpointFormatError(f"{key!r} has shape {list(t.shape)}, expected [n_ctx, dim]")


def read_dassl_context(path: str | os.PathLike, key: str | None = None) -> torch.Tensor:
    """Return the learned prompt context ([n_ctx, dim]) as a float32, contiguous CPU tensor.

    ``key`` names the state_dict entry; by default the first of ``prompt_learner.ctx``, ``ctx``,
    ``module.prompt_learner.ctx``, else the first 2-D float tensor whose key ends with ``ctx``.
    """
    zf, prefix, obj = _open(path)
    with zf:
        sd = _state_dict(obj, path)
        tensors = {str(k): v for k, v in sd.items() if isinstance(v, _LazyTensor)}
        if key is None:
            key = next((k for k in _PREFERRED_KEYS if k in tensors), None)
        if key is None:
            ends = [k for k in tensors if k.endswith("ctx")]
            plain = [k for k in ends if len(tensors[k].shape) == 2 and tensors[k].storage.dtype.is_floating_point]
            key = (plain or ends or [None])[0]
        if key is None or key not in tensors:
            if key is not None and isinstance(sd.get(key), Opaque):
                raise UnsafeCheckpointError(f"{key!r} is built by non-allowlisted {sd[key].name}")
            listed = ", ".join(list(tensors)[:_MAX_KEYS_IN_ERRORS]) or "none"
            more = f" (+{len(tensors) - _MAX_KEYS_IN_ERRORS} more)" if len(tensors) > _MAX_KEYS_IN_ERRORS else ""
            what = f"key {key!r} is not a tensor in" if key is not None else "no prompt context (ctx) in"
            raise CheckpointFormatError(f"{_name(path)}: {what} the state_dict; tensors found: {listed}{more}")
        _check_context(key, tensors[key])
        byteorder = (read_member(zf, f"{prefix}byteorder", _MAX_SMALL_BYTES).decode(errors="replace")
                     if f"{prefix}byteorder" in zf.namelist() else sys.byteorder)
        if byteorder not in ("little", "big"):
            raise CheckpointFormatError(f"{_name(path)}: unknown byteorder {byteorder!r}")
        ctx = tensors[key].materialize(zf, prefix, byteorder)
    logger.info("read prompt context %r %s (%s) from %s", key, list(ctx.shape), ctx.dtype, _name(path))
    # clone: never hand out a view that pins the whole (possibly shared) storage buffer
    return ctx.to(torch.float32).clone(memory_format=torch.contiguous_format)
