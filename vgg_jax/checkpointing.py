"""A thin Orbax wrapper: the checkpoint manager, restore with fallback, warm start.

Layout of DIR/checkpoints/<step>/ (plain Orbax, restorable without this code):
  state/  StandardSave of {'step', 'params', 'opt_state'}: the train state.
  meta/   JsonSave of make_meta(): {'config', 'step', 'data_position', 'class_names',
          'num_classes', 'plateau', 'eval', ...}: the run's config, where the input
          stream stands, schedule bookkeeping, eval metrics (imports add their source).
"""

import contextlib
import logging as std_logging
import os
from typing import Any

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from vgg_jax import errors

CHECKPOINT_SUBDIR = 'checkpoints'
BEST_METRIC = 'eval/top1_error'


# Orbax warnings about what this code does on purpose: read-only managers for evaluate,
# predict and warm starts, and reading a composite checkpoint's state item directly.
INTENDED_ORBAX_WARNINGS = ('read_only=True', 'Given directory is read only',
                           'Metadata file does not exist')


def filter_orbax_log(record: std_logging.LogRecord) -> bool:
  """A log filter: False for Orbax's INFO chatter and its warnings about intended use."""
  if 'orbax' not in record.pathname:
    return True
  if record.levelno < std_logging.WARNING:
    return False
  return not any(text in record.getMessage() for text in INTENDED_ORBAX_WARNINGS)


def quiet_orbax_logs():
  """Drops Orbax's INFO chatter and its warnings about intended read-only use (absl's handler).

  Other Orbax warnings still show.
  """
  logging.get_absl_handler().addFilter(filter_orbax_log)


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), CHECKPOINT_SUBDIR)


def create_manager(workdir: str, keep: int = 3, async_save: bool = True,
                   read_only: bool = False) -> ocp.CheckpointManager:
  """Keeps the latest `keep` checkpoints and the best by eval top-1 error."""
  policy = checkpoint_managers.AnyPreservationPolicy([
      checkpoint_managers.LatestN(n=keep),
      checkpoint_managers.BestN(get_metric_fn=lambda m: m[BEST_METRIC], reverse=True, n=1,
                                keep_checkpoints_without_metrics=False),
  ])
  options = ocp.CheckpointManagerOptions(
      preservation_policy=policy, enable_async_checkpointing=async_save,
      create=not read_only, read_only=read_only, cleanup_tmp_directories=not read_only)
  return ocp.CheckpointManager(checkpoint_dir(workdir), item_names=('state', 'meta'),
                               options=options)


def make_meta(config: dict[str, Any], step: int, *, global_batch_size: int,
              num_classes: int, class_names: list[str], plateau: dict[str, Any] | None = None,
              eval_metrics: dict[str, float] | None = None, **extra) -> dict[str, Any]:
  """The JSON meta saved beside each state: the run's config and where it stands."""
  return {'config': config, 'step': step, 'data_position': step * global_batch_size,
          'plateau': plateau or {}, 'class_names': list(class_names),
          'num_classes': num_classes, 'eval': eval_metrics or {}, **extra}


# Model fields added after checkpoints were first stored, and the value older runs had.
ADDED_MODEL_FIELDS = {'batch_norm': False, 'pool_impl': 'auto'}


def upgrade_meta(meta: dict[str, Any]) -> dict[str, Any]:
  """A stored meta in today's form: every compatibility rule for older checkpoints, once."""
  model = meta['config']['model']
  for name, value in ADDED_MODEL_FIELDS.items():
    model.setdefault(name, value)
  return meta


def model_fields(meta: dict[str, Any]) -> dict[str, Any]:
  """The fields of the model a checkpoint's meta describes (models.create_model takes them)."""
  return dict(meta['config']['model'], num_classes=meta['num_classes'])


def model_signature(model_config) -> dict[str, Any]:
  """The fields a checkpoint's parameters depend on."""
  return {k: model_config[k] for k in ('variant', 'num_classes', 'width', 'fc_width',
                                       'image_size', 'batch_norm')}


def check_compatible(workdir: str, stored_meta: dict[str, Any], model_config,
                     num_classes: int):
  """Raises if workdir's checkpoints are of another model than the config's."""
  stored = model_signature(model_fields(stored_meta))
  wanted = model_signature(dict(model_config.items(), num_classes=num_classes))
  diffs = [f'{k}: checkpoint {stored[k]!r} vs config {wanted[k]!r}'
           for k in stored if stored[k] != wanted[k]]
  if diffs:
    raise errors.InvalidInput(
        f'{workdir} holds checkpoints of another model ({"; ".join(diffs)}). '
        'Use another --workdir, or match the config to the checkpoint.')


def save(manager: ocp.CheckpointManager, step: int, state, meta: dict[str, Any],
         metrics: dict[str, float] | None = None):
  """Starts an (async) save of the state and its JSON metadata at `step`."""
  manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                             meta=ocp.args.JsonSave(meta)),
               metrics=metrics, force=True)


def read_meta(manager: ocp.CheckpointManager, step: int) -> dict[str, Any]:
  return upgrade_meta(manager.restore(
      step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta'])


def restore_latest(manager: ocp.CheckpointManager, abstract_state):
  """(state, meta) of the newest checkpoint that restores, or None if there is none.

  A checkpoint that fails to restore (half-written, corrupted) is skipped, with a
  warning, in favour of the one before it, and moved aside to corrupt_step_<N> (kept
  for inspection) so that the step can be saved again.
  """
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      restored = manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    except Exception as error:  # pylint: disable=broad-except
      logging.warning('Checkpoint at step %d in %s does not restore (%s: %s); '
                      'falling back to the previous one.', step, manager.directory,
                      type(error).__name__, str(error).splitlines()[0] if str(error) else '')
      set_aside(manager, step)
      continue
    return restored['state'], upgrade_meta(restored['meta'])
  return None


def set_aside(manager: ocp.CheckpointManager, step: int):
  """Renames checkpoint `step` to corrupt_step_<step> (process 0) and reloads."""
  if jax.process_index() == 0:
    path = os.path.join(str(manager.directory), str(step))
    target = os.path.join(str(manager.directory), f'corrupt_step_{step}')
    while os.path.exists(target):
      target += '_'
    os.rename(path, target)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f'set_aside_{step}')
  manager.reload()


def finished_steps(workdir: str) -> list[int]:
  """The steps with a committed checkpoint in workdir, ascending, read from the directory
  alone (no Orbax, no other process): a save in progress has a temporary name."""
  directory = checkpoint_dir(workdir)
  if not os.path.isdir(directory):
    return []
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def best_step(manager: ocp.CheckpointManager) -> int | None:
  """The step with the lowest eval top-1 error (the later on ties), else the latest."""
  scored = []
  for step in manager.all_steps():
    metrics = read_meta(manager, step).get('eval') or {}
    if BEST_METRIC in metrics:
      scored.append((metrics[BEST_METRIC], -step))
  return -min(scored)[1] if scored else manager.latest_step()


@contextlib.contextmanager
def _reading(workdir: str):
  """(checkpoint directory, a read-only manager holding at least one finished step)."""
  directory = checkpoint_dir(workdir)
  if not os.path.isdir(directory):
    raise errors.NotFound(f'No checkpoints in {workdir}: {directory} does not exist.')
  with create_manager(workdir, read_only=True) as manager:
    if manager.latest_step() is None:
      raise errors.NotFound(f'No finished checkpoint in {directory}.')
    yield directory, manager


def _find_step(workdir: str, step: int | None) -> tuple[str, int, dict[str, Any]]:
  """(checkpoint directory, step, meta) of a run's checkpoint (latest by default)."""
  with _reading(workdir) as (directory, manager):
    step = manager.latest_step() if step is None else step
    return directory, step, read_meta(manager, step)


def load_meta(workdir: str, step: int | None = None) -> dict[str, Any]:
  """The JSON meta of a run's checkpoint (latest by default)."""
  return _find_step(workdir, step)[2]


def load_variables(workdir: str, step: int | None = None):
  """(variables, meta) of a run's checkpoint (latest by default), as numpy arrays.

  variables is {'params': ...}, plus 'batch_stats' for the batch-norm variants: what
  model.apply takes. Works whatever device topology saved it: the target tree is built
  from the checkpoint's own metadata, on this process's first device.
  """
  directory, step, meta = _find_step(workdir, step)
  state_dir = os.path.join(directory, str(step), 'state')
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  with ocp.StandardCheckpointer() as checkpointer:
    tree = checkpointer.metadata(state_dir).item_metadata.tree
    target = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), tree)
    state = checkpointer.restore(state_dir, target)
  variables = {k: state[k] for k in ('params', 'batch_stats') if k in state}
  return jax.tree_util.tree_map(np.asarray, variables), meta


def resolve_step(workdir: str, which) -> int:
  """'best', 'latest' or a step number -> a step with a checkpoint in workdir."""
  with _reading(workdir) as (directory, manager):
    steps = list(manager.all_steps())
    if which == 'best':
      return best_step(manager)
    if which == 'latest':
      return manager.latest_step()
    step = int(which)
    if step not in steps:
      raise errors.InvalidInput(
          f'No checkpoint at step {step} in {workdir}; it has {sorted(steps)}.')
    return step


def copy_layers(params, source_params, layers, source_name: str = 'source'):
  """params with `layers` replaced by the source's; a missing or misshaped layer raises."""
  params = dict(params)
  for layer in layers:
    if layer not in source_params:
      raise errors.InvalidInput(
          f'Warm start: layer {layer!r} is not in {source_name} '
          f'(it has {sorted(source_params)}).')
    if layer not in params:
      raise errors.InvalidInput(
          f'Warm start: layer {layer!r} is not in this model '
          f'(it has {sorted(params)}).')
    ours, theirs = params[layer], source_params[layer]
    ours_shapes = jax.tree_util.tree_map(np.shape, ours)
    theirs_shapes = jax.tree_util.tree_map(np.shape, theirs)
    if ours_shapes != theirs_shapes:
      raise errors.InvalidInput(
          f'Warm start: layer {layer!r} has shapes {theirs_shapes} in {source_name} but '
          f'{ours_shapes} in this model: match its --config.model fields, or leave it out of '
          '--config.init_layers.')
    params[layer] = jax.tree_util.tree_map(
        lambda mine, src: np.asarray(src, dtype=mine.dtype), ours, theirs)
  return params
