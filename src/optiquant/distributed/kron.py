"""PSGD Kron with the preconditioner work divided among the ranks.

Each parameter is owned by one rank, chosen once so that the estimated
preconditioner cost per rank is balanced (:func:`~optiquant.distributed.balanced_owners`).
At every step:

1. the owner gets the parameter's whole gradient (for an FSDP2-sharded parameter the
   shards are sent to it with one ``all_to_all`` per dtype; under DDP every rank
   already holds it);
2. the owner fits and applies the Kron preconditioner of its parameters only, with
   its own Kron state (momentum and factors live on the owner alone);
3. the preconditioned directions go back with collectives: every rank receives its
   shard (FSDP2) or the whole tensor (DDP, by ``broadcast`` from the owner);
4. every rank applies weight decay and the learning rate to its own piece.

The result does not depend on the number of ranks: each parameter draws its random
probe vectors from its own seed (derived from ``seed`` and the parameter's position),
so a single process computes what any world size computes, up to the rounding of the
gradient reduction. Under DDP all ranks end with bit-identical parameters.
"""

from __future__ import annotations

import time
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.distributed as dist

from optiquant.distributed._exchange import (
    Item,
    broadcast_from_owners,
    comm_device,
    gather_to_owners,
    scatter_from_owners,
)
from optiquant.distributed._shards import ShardInfo, is_dtensor, shard_info
from optiquant.distributed.partition import balanced_owners, kron_cost
from optiquant.optim.base import GradientTransformation, chain
from optiquant.optim.transform import add_decayed_weights, scale
from optiquant.optim.update import apply_updates
from optiquant.psgd import ScaleByKronState, scale_by_kron

__all__ = ["DistributedKron", "param_seed"]

_MASK64 = (1 << 64) - 1


def param_seed(seed: int, index: int) -> int:
    """The probe seed of parameter ``index`` (a 63-bit mix of ``seed`` and ``index``).

    >>> param_seed(0, 1) != param_seed(0, 2), param_seed(5, 3) == param_seed(5, 3)
    (True, True)
    """
    z = (seed * 0x9E3779B97F4A7C15 + (index + 1) * 0xD1B54A32D192ED03) & _MASK64
    z = ((z ^ (z >> 31)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 29)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 32)) & ((1 << 63) - 1)


_SCALARS = ("count", "update_acc", "scale_set", "seed")


def _state_to_dict(state: ScaleByKronState) -> dict[str, torch.Tensor]:
    out = {name: getattr(state, name) for name in _SCALARS}
    if state.mu is not None:
        out["mu"] = state.mu
    for k, q in enumerate(state.Qs):
        out[f"Q.{k}"] = q
    return out


def _state_from_dict(entries: dict[str, Any], n_factors: int) -> ScaleByKronState:
    return ScaleByKronState(
        count=entries["count"],
        update_acc=entries["update_acc"],
        scale_set=entries["scale_set"],
        seed=entries["seed"],
        mu=entries.get("mu"),
        Qs=tuple(entries[f"Q.{k}"] for k in range(n_factors)),
    )


class DistributedKron(torch.optim.Optimizer):
    """PSGD Kron whose preconditioners are fitted and applied by one owner rank each.

    Works on plain parameters replicated by ``DistributedDataParallel``, on
    ``fully_shard`` (FSDP2) DTensor parameters, and in a single process (then every
    parameter is owned locally). ``lr`` and ``weight_decay`` are per param group
    (LR schedulers work); the preconditioner options are those of
    :func:`optiquant.psgd.scale_by_kron` and apply to all groups. Create it after
    ``fully_shard``; all param groups are given at construction.

    ``process_group`` defaults to the default group when ``torch.distributed`` is
    initialised (else a world of one).

    >>> import torch
    >>> from optiquant.distributed import DistributedKron
    >>> w = torch.nn.Parameter(torch.tensor([[1.0, -2.0], [3.0, 0.5]]))
    >>> opt = DistributedKron([w], lr=0.1)
    >>> for _ in range(50):
    ...     opt.zero_grad()
    ...     (w**2).sum().backward()
    ...     opt.step()
    >>> bool((w**2).sum() < 0.05 * 14.25)
    True
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | torch.Tensor = 1e-3,
        b1: float = 0.9,
        weight_decay: float = 0.0,
        preconditioner_update_probability: float | Callable[[int], Any] | None = None,
        max_size_triangular: int = 8192,
        min_ndim_triangular: int = 2,
        memory_save_mode: str | None = None,
        momentum_into_precond_update: bool = True,
        precond_lr: float | Callable[[int], Any] = 0.1,
        precond_init_scale: float | None = 1.0,
        mu_dtype: torch.dtype | None = None,
        precond_dtype: torch.dtype | None = None,
        *,
        geometry: str = "eq",
        clip_update_rms: float | None = 1.1,
        seed: int = 0,
        process_group: Any = None,
    ) -> None:
        self._kron_kwargs: dict[str, Any] = dict(
            b1=b1,
            preconditioner_update_probability=preconditioner_update_probability,
            max_size_triangular=max_size_triangular,
            min_ndim_triangular=min_ndim_triangular,
            memory_save_mode=memory_save_mode,
            momentum_into_precond_update=momentum_into_precond_update,
            precond_lr=precond_lr,
            precond_init_scale=precond_init_scale,
            mu_dtype=mu_dtype,
            precond_dtype=precond_dtype,
            geometry=geometry,
            clip_update_rms=clip_update_rms,
        )
        scale_by_kron(**self._kron_kwargs, seed=seed)  # validates the options
        _tail(lr, weight_decay)  # validates lr and weight_decay
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed: expected an int >= 0, got {seed!r}")
        self._seed = seed
        self._group = process_group
        if process_group is not None or (dist.is_available() and dist.is_initialized()):
            self._rank = dist.get_rank(process_group)
            self._world = dist.get_world_size(process_group)
        else:
            self._rank, self._world = 0, 1
        self._building = True
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay))
        self._building = False
        self._params: list[torch.Tensor] = [p for g in self.param_groups for p in g["params"]]
        self._infos: list[ShardInfo] = []
        for i, p in enumerate(self._params):
            if not p.is_floating_point():
                raise TypeError(f"params[{i}]: expected a floating-point tensor, got {p.dtype}")
            if p.numel() == 0:
                raise ValueError(f"params[{i}]: empty tensors have no preconditioner")
            self._infos.append(shard_info(p, f"params[{i}]", self._world))
        self._check_same_params_everywhere()
        costs = [
            kron_cost(
                info.shape,
                max_size_triangular=max_size_triangular,
                min_ndim_triangular=min_ndim_triangular,
                memory_save_mode=memory_save_mode,
            )
            for info in self._infos
        ]
        #: The owner rank of each parameter (in param-group order).
        self.owners: list[int] = balanced_owners(costs, self._world)
        self._txs: dict[int, GradientTransformation] = {}
        #: Seconds spent in the last step: ``"precondition"`` (this rank's Kron work, wall
        #: clock), ``"precondition_cpu"`` (the same, CPU time of this process),
        #: ``"communication"`` (collectives) and ``"total"``.
        self.last_step_seconds: dict[str, float] = {}

    # ------------------------------------------------------------------------ set-up
    @property
    def world_size(self) -> int:
        """Number of ranks sharing the work."""
        return self._world

    @property
    def rank(self) -> int:
        """This process's rank in the optimizer's process group."""
        return self._rank

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Only during construction: ownership is decided once for all parameters."""
        if not getattr(self, "_building", False):
            raise RuntimeError(
                "DistributedKron: param groups cannot be added after construction (the "
                "owner of every parameter is decided once); pass all groups to the constructor"
            )
        super().add_param_group(param_group)

    def _check_same_params_everywhere(self) -> None:
        if self._world == 1:
            return
        sig = torch.tensor(
            [len(self._params)]
            + [
                zlib.crc32(repr((info.shape, info.dim, str(p.dtype))).encode())
                for p, info in zip(self._params, self._infos)
            ],
            dtype=torch.int64,
        )
        device = self._comm_device()
        sig = sig.to(device)
        sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(self._world)]
        dist.all_gather(sizes, torch.tensor([sig.numel()], device=device), group=self._group)
        if len({int(s) for s in sizes}) != 1:
            raise ValueError(
                "params: the ranks passed different numbers of parameters to DistributedKron; "
                "every rank must pass the same parameters in the same order"
            )
        gathered = [torch.zeros_like(sig) for _ in range(self._world)]
        dist.all_gather(gathered, sig, group=self._group)
        if any(not torch.equal(g, sig) for g in gathered):
            raise ValueError(
                "params: the ranks passed parameters of different shapes, dtypes or "
                "shardings to DistributedKron; every rank must pass the same parameters in "
                "the same order"
            )

    def _comm_device(self) -> torch.device:
        return comm_device(self._group)

    def _tx(self, index: int) -> GradientTransformation:
        tx = self._txs.get(index)
        if tx is None:
            tx = scale_by_kron(**self._kron_kwargs, seed=param_seed(self._seed, index))
            self._txs[index] = tx
        return tx

    def _fresh_state(self, index: int) -> dict[str, torch.Tensor]:
        p = self._params[index]
        local = _local(p)
        template = torch.zeros(self._infos[index].shape, dtype=p.dtype, device=local.device)
        return _state_to_dict(self._tx(index).init(template))

    # ----------------------------------------------------------------------------- step
    def _agree_on_grads(self, grads: list[torch.Tensor | None]) -> list[bool]:
        present = [g is not None for g in grads]
        if self._world == 1:
            return present
        device = self._comm_device()
        counts = torch.tensor(present, dtype=torch.int32, device=device)
        dist.all_reduce(counts, group=self._group)
        agreed = []
        for i, c in enumerate(counts.tolist()):
            if c not in (0, self._world):
                raise RuntimeError(
                    f"params[{i}] has a gradient on {c} of {self._world} ranks: DistributedKron "
                    "needs every rank to step the same parameters (were some layers unused on "
                    "some ranks?)"
                )
            agreed.append(c == self._world)
        if not any(agreed):
            raise RuntimeError(
                "DistributedKron.step: no parameter has a gradient on any rank. If the model "
                "was sharded with fully_shard after the optimizer was created, the optimizer "
                "holds the old, unsharded parameters: create it after fully_shard(model)."
            )
        return agreed

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One optimisation step (collective: every rank must call it)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        start = time.perf_counter()
        comm = 0.0
        grads = [p.grad for p in self._params]
        present = self._agree_on_grads(grads)
        comm += time.perf_counter() - start
        if not any(present):
            return loss
        sharded: list[Item] = []
        replicated: list[Item] = []
        local_grads: dict[int, torch.Tensor] = {}
        for i, (p, g) in enumerate(zip(self._params, grads)):
            if not present[i]:
                continue
            assert g is not None
            info = self._infos[i]
            if is_dtensor(g):
                dg: Any = g
                dp: Any = p
                if tuple(dg.placements) != tuple(dp.placements):
                    dg = dg.redistribute(dp.device_mesh, dp.placements)
                g = dg.to_local()
            if g.is_sparse:
                raise RuntimeError("DistributedKron does not support sparse gradients")
            local_grads[i] = g
            item = Item(i, self.owners[i], info, g.dtype, g.device)
            (sharded if info.dim is not None and self._world > 1 else replicated).append(item)

        t0 = time.perf_counter()
        wholes = gather_to_owners(sharded, local_grads, self._rank, self._world, self._group)
        comm += time.perf_counter() - t0
        for it in replicated:
            if it.owner == self._rank:
                wholes[it.index] = local_grads[it.index].clone()

        t0, c0 = time.perf_counter(), time.process_time()
        directions: dict[int, torch.Tensor] = {}
        for i in sorted(wholes):
            directions[i] = self._precondition(i, wholes[i])
        precond_time = time.perf_counter() - t0
        precond_cpu = time.process_time() - c0

        t0 = time.perf_counter()
        if self._world == 1:
            pieces = directions
        else:
            pieces = scatter_from_owners(sharded, directions, self._rank, self._world, self._group)
            pieces.update(
                broadcast_from_owners(replicated, directions, self._rank, self._world, self._group)
            )
        comm += time.perf_counter() - t0

        offset = 0
        for group in self.param_groups:
            idx = [offset + k for k in range(len(group["params"])) if present[offset + k]]
            offset += len(group["params"])
            if not idx:
                continue
            ps = [_local(self._params[i]) for i in idx]
            ds = [pieces[i] for i in idx]
            tail = _tail(group["lr"], group["weight_decay"])
            updates, _ = tail.update(ds, tail.init(ps), ps, inplace=True)
            apply_updates(ps, updates, inplace=True)
        self.last_step_seconds = {
            "precondition": precond_time,
            "precondition_cpu": precond_cpu,
            "communication": comm,
            "total": time.perf_counter() - start,
        }
        return loss

    def _precondition(self, index: int, grad: torch.Tensor) -> torch.Tensor:
        p = self._params[index]
        entries = self.state[p]
        if not entries:
            entries.update(self._fresh_state(index))
        n_factors = sum(1 for k in entries if k.startswith("Q."))
        state = _state_from_dict(entries, n_factors)
        direction, new_state = self._tx(index).update(grad, state, None, inplace=True)
        entries.update(_state_to_dict(new_state))
        return direction

    # ------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """``torch.optim``'s state dict (this rank's owned state) plus the world layout.

        It reloads only on the same world size; use
        :func:`~optiquant.distributed.save_checkpoint` to change the world size.
        """
        out = super().state_dict()
        out["distributed"] = {"world_size": self._world, "owners": list(self.owners)}
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state from :meth:`state_dict` taken on the same rank of the same world size.

        Raises ``ValueError`` for another world size, another parameter layout, or
        state entries that do not fit the parameters.
        """
        layout = state_dict.get("distributed")
        if not isinstance(layout, dict) or "world_size" not in layout:
            raise ValueError(
                "state_dict: no 'distributed' entry; expected a DistributedKron.state_dict()"
            )
        if int(layout["world_size"]) != self._world:
            raise ValueError(
                f"state_dict was saved with world size {layout['world_size']}, this optimizer "
                f"runs on world size {self._world}: per-rank state dicts only reload on the "
                "same world size; use optiquant.distributed.save_checkpoint/load_checkpoint "
                "(torch.distributed.checkpoint) to change it"
            )
        if list(layout.get("owners", [])) != self.owners:
            raise ValueError(
                "state_dict: its parameter owners differ from this optimizer's (a different "
                "model or different Kron options)"
            )
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups) or any(
            len(a["params"]) != len(b["params"]) for a, b in zip(groups, self.param_groups)
        ):
            raise ValueError("state_dict: its param groups do not match this optimizer's")
        saved_ids = [pid for g in groups for pid in g["params"]]
        by_id = dict(zip(saved_ids, range(len(saved_ids))))
        new_state: defaultdict[Any, dict[str, Any]] = defaultdict(dict)
        for pid, entries in state_dict["state"].items():
            if pid not in by_id:
                raise ValueError(f"state_dict: state for unknown parameter id {pid!r}")
            i = by_id[pid]
            if self.owners[i] != self._rank:
                raise ValueError(
                    f"state_dict: holds state for params[{i}], which rank {self.owners[i]} "
                    f"owns, but this is rank {self._rank} (a state dict of another rank?)"
                )
            fresh = self._fresh_state(i)
            if set(entries) != set(fresh):
                raise ValueError(
                    f"state_dict: state of params[{i}] has entries {sorted(entries)}, "
                    f"expected {sorted(fresh)}"
                )
            loaded = {}
            for key, ref in fresh.items():
                value = entries[key]
                if not isinstance(value, torch.Tensor) or value.shape != ref.shape:
                    raise ValueError(
                        f"state_dict: entry {key!r} of params[{i}] has shape "
                        f"{getattr(value, 'shape', None)}, expected {tuple(ref.shape)}"
                    )
                loaded[key] = value.detach().clone().to(ref.device)
            new_state[self._params[i]] = loaded
        for mine, theirs in zip(self.param_groups, groups):
            for key, value in theirs.items():
                if key != "params":
                    mine[key] = value
        self.state = new_state

    def sharded_state_dict(self) -> dict[str, torch.Tensor]:
        """This rank's Kron state as flat tensors keyed by parameter position.

        Keys do not depend on the world size (``"kron.<index>.<entry>"``), so a
        checkpoint written with ``torch.distributed.checkpoint`` from these dicts
        reloads on any world size (see :func:`~optiquant.distributed.load_checkpoint`).
        """
        out: dict[str, torch.Tensor] = {
            "kron.num_params": torch.tensor(len(self._params), dtype=torch.int64)
        }
        for i, p in enumerate(self._params):
            if self.owners[i] != self._rank:
                continue
            for key, value in self.state.get(p, {}).items():
                out[f"kron.{i}.{key}"] = value
        return out

    def fresh_state_template(self, index: int) -> dict[str, torch.Tensor]:
        """The state entries parameter ``index`` gets on its first step (shapes, dtypes)."""
        return self._fresh_state(index)

    def set_owned_state(self, index: int, entries: dict[str, torch.Tensor]) -> None:
        """Install the Kron state of parameter ``index``, which this rank must own."""
        if self.owners[index] != self._rank:
            raise ValueError(
                f"params[{index}] is owned by rank {self.owners[index]}, not rank {self._rank}"
            )
        self.state[self._params[index]] = dict(entries)


def _local(p: Any) -> torch.Tensor:
    """This rank's piece of ``p`` (a view that shares its storage)."""
    return p.to_local() if is_dtensor(p) else p


def _tail(lr: Any, weight_decay: Any) -> GradientTransformation:
    if isinstance(lr, bool) or not isinstance(lr, (int, float, torch.Tensor)):
        raise TypeError(f"lr: expected a number or a tensor, got {type(lr).__name__}")
    if not float(lr) >= 0.0:
        raise ValueError(f"lr: expected a value >= 0, got {float(lr)}")
    return chain(add_decayed_weights(weight_decay), scale(-lr))
