"""The device mesh and how arrays are laid out on it: one ('data',) axis.

Parameters and optimizer state are replicated; every batch is split on its first axis
over all devices of all processes.
"""

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

from vgg_jax import errors


def create_mesh(local: bool = False) -> Mesh:
  """A 1-D ('data',) mesh over all devices of all processes (local: this process's)."""
  return Mesh(np.asarray(jax.local_devices() if local else jax.devices()), ('data',))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P('data'))


def make_global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Host-local numpy batch -> global arrays split over the 'data' axis."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v)
          for k, v in local_batch.items()}


def local_rows(array: jax.Array) -> np.ndarray:
  """This process's rows of an array split over 'data', in order: make_global_batch undone."""
  shards = sorted(array.addressable_shards, key=lambda shard: shard.index[0].start or 0)
  return np.concatenate([np.asarray(shard.data) for shard in shards])


def check_batch_size(global_batch_size: int, num_devices: int, accum_steps: int = 1,
                     name: str = 'global_batch_size'):
  if accum_steps < 1:
    raise errors.InvalidInput(f'grad_accum_steps must be >= 1, got {accum_steps}.')
  if global_batch_size % (num_devices * accum_steps):
    raise errors.InvalidInput(
        f'config.{name}={global_batch_size} is not divisible by the {num_devices} devices'
        + (f' x {accum_steps} accumulation steps' if accum_steps > 1 else '')
        + '; choose a multiple of ' + str(num_devices * accum_steps) + '.')
