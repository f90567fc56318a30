"""The optimiser of Sec. 3.1: SGD with momentum, L2 weight decay, the lr schedules.

config.optimizer (experiments/configs/base.py:optimizer_config) enters the library once,
as an OptimizerConfig; the rest of the library takes that or plain values.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax

from vgg_jax import errors

SCHEDULES = ('plateau', 'step', 'cosine')


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """config.optimizer, typed; its defaults and units are in base.optimizer_config()."""
  learning_rate: float
  momentum: float
  weight_decay: float
  decay_biases: bool
  schedule: str  # One of SCHEDULES.
  plateau_factor: float
  plateau_patience: int
  plateau_max_decays: int
  plateau_min_delta: float
  step_decay_epochs: tuple[float, ...]
  freeze_conv_base: bool
  unfreeze_last_stage: bool

  @classmethod
  def from_config(cls, section) -> 'OptimizerConfig':
    """From config.optimizer (a ConfigDict or a dict)."""
    fields = {f.name: section[f.name] for f in dataclasses.fields(cls)}
    return cls(**dict(fields, step_decay_epochs=tuple(fields['step_decay_epochs'])))


def decay_mask(params, decay_biases: bool = False):
  """True where weight decay applies: every kernel, and biases only if asked.

  BatchNorm's scale and bias (batch-norm variants) are never decayed.
  """
  def applies(path, _):
    name = path[-1].key if hasattr(path[-1], 'key') else str(path[-1])
    layer = path[0].key if hasattr(path[0], 'key') else str(path[0])
    if layer.startswith('bn'):
      return False
    return name != 'bias' or decay_biases
  return jax.tree_util.tree_map_with_path(applies, params)


def is_frozen(layer: str, freeze_conv_base: bool, unfreeze_last_stage: bool) -> bool:
  """Whether freeze_conv_base freezes layer: conv (and BatchNorm) layers, except conv5_*
  (and bn5_*) with unfreeze_last_stage."""
  if not (freeze_conv_base and layer.startswith(('conv', 'bn'))):
    return False
  return not (unfreeze_last_stage and layer.startswith(('conv5_', 'bn5_')))


def frozen_labels(params, unfreeze_last_stage: bool):
  """'frozen' or 'train' for every parameter of a net with a frozen conv base."""
  def labels(layer, p):
    label = 'frozen' if is_frozen(layer, True, unfreeze_last_stage) else 'train'
    return jax.tree_util.tree_map(lambda _: label, p)
  return {layer: labels(layer, p) for layer, p in params.items()}


def learning_rate_schedule(config: OptimizerConfig, steps_per_epoch: int, total_steps: int):
  """A float (plateau: changed by the host after evals) or an optax schedule."""
  if config.schedule == 'plateau':
    return config.learning_rate
  if config.schedule == 'step':
    boundaries = {int(e * steps_per_epoch): 0.1 for e in config.step_decay_epochs}
    return optax.piecewise_constant_schedule(config.learning_rate, boundaries)
  if config.schedule == 'cosine':
    return optax.cosine_decay_schedule(config.learning_rate, max(1, total_steps))
  raise errors.InvalidInput(
      f'config.optimizer.schedule={config.schedule!r} is not one of {SCHEDULES}.')


def create_optimizer(config: OptimizerConfig, steps_per_epoch: int, total_steps: int):
  """SGD with momentum; L2 weight decay added to the gradient (Sec. 3.1).

  With config.freeze_conv_base the conv layers get zero updates (and no decay).
  """
  def sgd_with_decay(learning_rate):
    sgd = optax.chain(
        optax.add_decayed_weights(config.weight_decay, mask=functools.partial(
            decay_mask, decay_biases=config.decay_biases)),
        optax.sgd(learning_rate, momentum=config.momentum))
    if not config.freeze_conv_base:
      return sgd
    return optax.multi_transform({'train': sgd, 'frozen': optax.set_to_zero()},
                                 functools.partial(frozen_labels, unfreeze_last_stage=
                                                   config.unfreeze_last_stage))
  schedule = learning_rate_schedule(config, steps_per_epoch, total_steps)
  return optax.inject_hyperparams(sgd_with_decay)(learning_rate=schedule)


def current_learning_rate(opt_state) -> jax.Array:
  return opt_state.hyperparams['learning_rate']


def set_learning_rate(opt_state, value: float):
  """opt_state with its learning rate set (the plateau schedule's lever)."""
  old = current_learning_rate(opt_state)
  new = jax.device_put(jnp.asarray(value, old.dtype), old.sharding)
  return opt_state._replace(hyperparams=dict(opt_state.hyperparams, learning_rate=new))


@dataclasses.dataclass(frozen=True)
class Plateau:
  """Bookkeeping of the plateau schedule (Sec. 3.1), saved in each checkpoint's meta."""
  best_error: float = 2.0  # Best eval top-1 error so far (errors are <= 1).
  bad_evals: int = 0  # Evals since the last improvement.
  decays: int = 0  # Divisions by 10 so far.


def update_plateau(plateau: Plateau, error: float, config: OptimizerConfig) -> tuple[Plateau, bool]:
  """Sec. 3.1: divide the lr by 10 when eval accuracy stops improving, at most 3 times.

  Returns the new bookkeeping and whether to decay now.
  """
  if error < plateau.best_error - config.plateau_min_delta:
    return Plateau(best_error=error, bad_evals=0, decays=plateau.decays), False
  bad_evals = plateau.bad_evals + 1
  if bad_evals >= config.plateau_patience and plateau.decays < config.plateau_max_decays:
    return dataclasses.replace(plateau, bad_evals=0, decays=plateau.decays + 1), True
  return dataclasses.replace(plateau, bad_evals=bad_evals), False


def plateau_learning_rate(plateau: Plateau, learning_rate: float, factor: float) -> float:
  """The learning rate after plateau.decays divisions by 1 / factor."""
  return learning_rate * factor**plateau.decays
