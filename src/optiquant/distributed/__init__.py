"""optiquant on PyTorch's own distributed engine (DDP, FSDP2, RPC).

* Element-wise class optimizers (``optiquant.Adam``, ``SGD``...) run unchanged under
  ``DistributedDataParallel`` and on ``fully_shard`` (FSDP2) parameters.
* :func:`gathered` runs any transformation on whole tensors when the parameters are
  sharded DTensors; :class:`DistributedKron` divides PSGD Kron's preconditioner work
  among the ranks; :func:`save_checkpoint` / :func:`load_checkpoint` store its state
  with ``torch.distributed.checkpoint`` and reload it on another world size.
* :func:`full_params` and :func:`save_quantized` write a quantized file from a
  sharded model; :func:`check_optimizer` catches an optimizer created before
  ``fully_shard`` replaced the model's parameters.
* RPC helpers for task-parallel meta-learning: :func:`auto_init_rpc`,
  :func:`parallelize`, partitioners, reducers, rank helpers and
  :mod:`optiquant.distributed.autograd`.

See ``docs/scaling_out.md`` for ``torchrun`` command lines.
"""

from optiquant.distributed import autograd as autograd
from optiquant.distributed.checkpoint import (
    load_checkpoint,
    read_checkpoint_metadata,
    save_checkpoint,
)
from optiquant.distributed.fsdp import check_optimizer, full_params
from optiquant.distributed.gathered import gathered
from optiquant.distributed.kron import DistributedKron, param_seed
from optiquant.distributed.partition import balanced_owners, kron_cost
from optiquant.distributed.quant import save_quantized
from optiquant.distributed.rpc import (
    Parallelized,
    TensorDimensionPartitioner,
    auto_init_rpc,
    batch_partitioner,
    dim_partitioner,
    exclusive_batch_partitioner,
    mean_reducer,
    parallelize,
    parallelize_async,
    parallelize_sync,
    remote_async_call,
    remote_sync_call,
    sum_reducer,
)
from optiquant.distributed.world import (
    WorldInfo,
    barrier,
    get_local_rank,
    get_local_world_size,
    get_rank,
    get_worker_id,
    get_world_info,
    get_world_rank,
    get_world_size,
    is_available,
    not_on_rank,
    on_rank,
    rank_non_zero_only,
    rank_zero_only,
    worker_name,
)

__all__ = [
    "DistributedKron",
    "Parallelized",
    "TensorDimensionPartitioner",
    "WorldInfo",
    "auto_init_rpc",
    "autograd",
    "balanced_owners",
    "barrier",
    "batch_partitioner",
    "check_optimizer",
    "dim_partitioner",
    "exclusive_batch_partitioner",
    "full_params",
    "gathered",
    "get_local_rank",
    "get_local_world_size",
    "get_rank",
    "get_worker_id",
    "get_world_info",
    "get_world_rank",
    "get_world_size",
    "is_available",
    "kron_cost",
    "load_checkpoint",
    "mean_reducer",
    "not_on_rank",
    "on_rank",
    "parallelize",
    "parallelize_async",
    "parallelize_sync",
    "param_seed",
    "rank_non_zero_only",
    "rank_zero_only",
    "read_checkpoint_metadata",
    "remote_async_call",
    "remote_sync_call",
    "save_checkpoint",
    "save_quantized",
    "sum_reducer",
    "worker_name",
]
