"""Optimizer checkpoints with ``torch.distributed.checkpoint`` that reload on any world size.

:func:`save_checkpoint` writes :meth:`DistributedKron.sharded_state_dict` of every rank
into one checkpoint directory (each rank writes the state of the parameters it owns);
:func:`load_checkpoint` reads back, on any number of ranks, the state of the
parameters each rank owns under the new world size.

Only tensors are stored, and reading never unpickles arbitrary objects: the
checkpoint's metadata file (a pickle written by PyTorch) is read with an unpickler that
accepts nothing but PyTorch's own checkpoint-metadata classes.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import warnings
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import torch

from optiquant.distributed.kron import DistributedKron

__all__ = ["load_checkpoint", "read_checkpoint_metadata", "save_checkpoint"]

_SINGLE_PROCESS_WARNING = r"torch\.distributed is disabled, unavailable or uninitialized"

_ALLOWED_MODULES = ("torch.distributed.checkpoint.metadata",)
_ALLOWED = {
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("collections", "OrderedDict"),
    ("pathlib", "PosixPath"),
    ("pathlib", "WindowsPath"),
    ("pathlib", "PurePosixPath"),
    ("pathlib", "PureWindowsPath"),
}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module in _ALLOWED_MODULES or (module, name) in _ALLOWED:
            return super().find_class(module, name)
        if module == "torch":
            value = getattr(torch, name, None)
            if isinstance(value, (torch.dtype, torch.layout, torch.memory_format)):
                return value
        raise pickle.UnpicklingError(
            f"checkpoint metadata refers to {module}.{name}, which checkpoint metadata never "
            "needs; refusing to load it"
        )


def _reader_class() -> Any:
    from torch.distributed.checkpoint import FileSystemReader

    class SafeFileSystemReader(FileSystemReader):
        """A ``FileSystemReader`` whose metadata is read with a restricted unpickler."""

        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            path = self._get_metadata_path(kwargs.get("rank"))
            with self.fs.create_stream(path, "rb") as handle:
                data = handle.read()
            try:
                metadata = _MetadataUnpickler(io.BytesIO(data)).load()
            except (pickle.UnpicklingError, EOFError, AttributeError, ValueError) as exc:
                raise ValueError(f"{self.path}: unreadable checkpoint metadata ({exc})") from None
            from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

            if not isinstance(metadata, Metadata):
                raise ValueError(f"{self.path}: the metadata file holds no checkpoint metadata")
            storage = getattr(metadata, "storage_meta", None)
            if storage is None:
                storage = metadata.storage_meta = StorageMeta()
            storage.load_id = self.load_id
            return metadata

    return SafeFileSystemReader


def _check_optimizer(optimizer: Any) -> DistributedKron:
    if not isinstance(optimizer, DistributedKron):
        raise TypeError(
            "optimizer: expected a DistributedKron, got "
            f"{type(optimizer).__name__}; for element-wise optimizers on FSDP2 use "
            "torch.distributed.checkpoint.state_dict.get_optimizer_state_dict"
        )
    return optimizer


@contextlib.contextmanager
def _quiet_single_process() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_SINGLE_PROCESS_WARNING, category=UserWarning)
        yield


def _group_kwargs(optimizer: DistributedKron) -> dict[str, Any]:
    if optimizer.world_size == 1:
        return {"no_dist": True}
    return {"process_group": optimizer._group}


def save_checkpoint(optimizer: DistributedKron, path: str | os.PathLike[str]) -> None:
    """Write ``optimizer``'s state (from every rank) into the checkpoint directory ``path``.

    Collective: every rank of the optimizer's process group must call it.

    >>> import tempfile, torch
    >>> from optiquant.distributed import DistributedKron, save_checkpoint, load_checkpoint
    >>> w = torch.nn.Parameter(torch.ones(3, 2))
    >>> opt = DistributedKron([w], lr=0.1)
    >>> w.grad = torch.ones(3, 2)
    >>> opt.step()
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     save_checkpoint(opt, tmp)
    ...     other = DistributedKron([torch.nn.Parameter(torch.ones(3, 2))], lr=0.1)
    ...     load_checkpoint(other, tmp)
    >>> int(next(iter(other.state.values()))["count"])
    1
    """
    opt = _check_optimizer(optimizer)
    import torch.distributed.checkpoint as dcp

    with _quiet_single_process():
        dcp.save(opt.sharded_state_dict(), checkpoint_id=os.fspath(path), **_group_kwargs(opt))


def read_checkpoint_metadata(path: str | os.PathLike[str]) -> Any:
    """The ``torch.distributed.checkpoint`` metadata of ``path``, read safely.

    Raises ``ValueError`` when the directory holds no readable checkpoint.

    >>> import tempfile, torch
    >>> from optiquant.distributed import DistributedKron, save_checkpoint
    >>> w = torch.nn.Parameter(torch.ones(3, 2))
    >>> opt = DistributedKron([w])
    >>> w.grad = torch.ones(3, 2)
    >>> opt.step()
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     save_checkpoint(opt, tmp)
    ...     entries = read_checkpoint_metadata(tmp).state_dict_metadata
    >>> sorted(entries)[:3]
    ['kron.0.Q.0', 'kron.0.Q.1', 'kron.0.count']
    """
    reader = _reader_class()(os.fspath(path))
    try:
        return reader.read_metadata()
    except FileNotFoundError:
        raise ValueError(f"{os.fspath(path)}: no checkpoint here (no metadata file)") from None


def load_checkpoint(optimizer: DistributedKron, path: str | os.PathLike[str]) -> None:
    """Load the state saved by :func:`save_checkpoint` into ``optimizer``, on any world size.

    Collective. Raises ``ValueError`` when the checkpoint is not a DistributedKron
    checkpoint, was written for a different number of parameters, or holds state
    whose entries or shapes do not fit a parameter.

    >>> import tempfile, torch
    >>> from optiquant.distributed import DistributedKron, save_checkpoint
    >>> w = torch.nn.Parameter(torch.ones(3, 2))
    >>> opt = DistributedKron([w])
    >>> w.grad = torch.ones(3, 2)
    >>> opt.step()
    >>> fresh = DistributedKron([torch.nn.Parameter(torch.ones(3, 2))])
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     save_checkpoint(opt, tmp)
    ...     load_checkpoint(fresh, tmp)
    >>> torch.equal(next(iter(fresh.state.values()))["Q.0"], opt.state[w]["Q.0"])
    True
    """
    opt = _check_optimizer(optimizer)
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    metadata = read_checkpoint_metadata(path)
    entries = metadata.state_dict_metadata
    count_md = entries.get("kron.num_params")
    if not isinstance(count_md, TensorStorageMetadata):
        raise ValueError(f"{os.fspath(path)}: not a DistributedKron checkpoint")
    template: dict[str, torch.Tensor] = {"kron.num_params": torch.zeros((), dtype=torch.int64)}
    per_param: dict[int, dict[str, str]] = {}
    for key, md in entries.items():
        if key == "kron.num_params":
            continue
        parts = key.split(".", 2)
        if len(parts) != 3 or parts[0] != "kron" or not parts[1].isdigit():
            raise ValueError(f"{os.fspath(path)}: unexpected checkpoint entry {key!r}")
        if not isinstance(md, TensorStorageMetadata):
            raise ValueError(f"{os.fspath(path)}: entry {key!r} is not a tensor")
        per_param.setdefault(int(parts[1]), {})[parts[2]] = key
    n_params = len(opt.owners)
    for index in sorted(per_param):
        if index >= n_params:
            raise ValueError(
                f"{os.fspath(path)}: holds state for parameter {index}, but the optimizer "
                f"has {n_params} parameters"
            )
        if opt.owners[index] != opt.rank:
            continue
        fresh = opt.fresh_state_template(index)
        keys = per_param[index]
        if set(keys) != set(fresh):
            raise ValueError(
                f"{os.fspath(path)}: state of parameter {index} has entries {sorted(keys)}, "
                f"expected {sorted(fresh)} (different Kron options?)"
            )
        for name, ref in fresh.items():
            md = entries[keys[name]]
            if tuple(md.size) != tuple(ref.shape):
                raise ValueError(
                    f"{os.fspath(path)}: entry {name!r} of parameter {index} has shape "
                    f"{tuple(md.size)}, expected {tuple(ref.shape)} (a different model?)"
                )
            template[keys[name]] = torch.empty(
                tuple(md.size), dtype=md.properties.dtype, device=ref.device
            )
    reader = _reader_class()(os.fspath(path))
    with _quiet_single_process():
        dcp.load(template, storage_reader=reader, **_group_kwargs(opt))
    saved = int(template["kron.num_params"])
    if saved != n_params:
        raise ValueError(
            f"{os.fspath(path)}: written for {saved} parameters, the optimizer has {n_params}"
        )
    opt.state = defaultdict(dict)
    for index in sorted(per_param):
        if index < n_params and opt.owners[index] == opt.rank:
            keys = per_param[index]
            opt.set_owned_state(index, {name: template[key] for name, key in keys.items()})
