"""Sec. 3.1's warm start: a net begins with layers copied from a trained one.

The paper trains net A from random weights, then starts the deeper nets with A's first
four conv layers and last three FC layers; named weights and imports start fine-tuning
runs the same way (--config.init_from, --config.init_layers).
"""

import functools
from typing import NamedTuple, Sequence

from absl import logging
import jax

from vgg_jax import checkpointing
from vgg_jax import errors
from vgg_jax import models
from vgg_jax import pretrained
from vgg_jax import sharding
from vgg_jax.training import steps


class WarmStart(NamedTuple):
  """Sec. 3.1: `layers` copied from the run or import in directory `source` ('': none)."""
  source: str
  layers: Sequence[str]


def initial_state(model, tx, mesh, rng, init_from: str, init_layers: Sequence[str]):
  """Fresh train state on the mesh, with init_layers copied from init_from (Sec. 3.1)."""
  state = jax.jit(functools.partial(steps.create_train_state, model, tx),
                  out_shardings=sharding.replicated(mesh))(rng)
  if not init_from:
    return state
  source, source_meta = checkpointing.load_variables(init_from)
  name = f"{init_from} (variant {source_meta['config']['model']['variant']})"
  source_bn = source_meta['config']['model']['batch_norm']
  if source_bn != model.batch_norm:
    raise errors.InvalidInput(
        f'Warm start: {name} is {"a" if source_bn else "not a"} batch-norm net '
        f'but config.model.batch_norm={model.batch_norm}: set '
        f'--config.model.batch_norm={source_bn}.')
  layers = list(init_layers)
  # A batch-norm net also takes each copied conv's BatchNorm (scale, bias, running stats).
  norm_of = models.norm_names(model.variant)
  norms = [norm_of[layer] for layer in layers if layer in norm_of
           and norm_of[layer] in source.get('batch_stats', {})
           and norm_of[layer] in (state.batch_stats or {})]
  params = checkpointing.copy_layers(jax.device_get(state.params), source['params'],
                                     layers + norms, name)
  logging.info('Warm start: copied %s from %s.', ', '.join(layers + norms), init_from)
  params = jax.device_put(params, sharding.replicated(mesh))
  state = state.replace(params=params, opt_state=tx.init(params))
  if norms:
    batch_stats = checkpointing.copy_layers(jax.device_get(state.batch_stats),
                                            source['batch_stats'], norms, name)
    state = state.replace(batch_stats=jax.device_put(batch_stats, sharding.replicated(mesh)))
  return state


def check_widths(name: str, source_model: dict, model, layers: Sequence[str]):
  """Refuses a source of another conv width (when convs are copied) or FC width (fc6,
  fc7), naming the --config.model flags that make this net's layers the source's shapes.
  model: the net or its config section (both have .width and .fc_width)."""
  fields = (['width'] if any(layer.startswith('conv') for layer in layers) else []) + (
      ['fc_width'] if {'fc6', 'fc7'} & set(layers) else [])
  differ = [f for f in fields if f in source_model and source_model[f] != getattr(model, f)]
  if differ:
    raise errors.InvalidInput(
        f'Warm start: {name} has {", ".join(f"{f}={source_model[f]}" for f in differ)} but '
        f'this net {", ".join(f"{f}={getattr(model, f)}" for f in differ)}; copied layers '
        'must have the same shapes: set '
        f'{" ".join(f"--config.model.{f}={source_model[f]}" for f in differ)}, or leave '
        'those layers out of --config.init_layers.')


def with_source(config):
  """config with init_from a directory (named weights fetched into the cache), and the
  mean RGB of init_from's run or import when the config gives none. A source of another
  width is refused here, before the run writes anything (check_widths)."""
  if not config.init_from:
    return config
  directory = pretrained.resolve(config.init_from)
  if directory != config.init_from:
    logging.info('Warm start from %s: %s.', config.init_from, directory)
    config = config.copy_and_resolve_references()
    config.init_from = directory
  source = checkpointing.load_meta(config.init_from)['config']
  check_widths(f"{config.init_from} (variant {source['model']['variant']})", source['model'],
               config.model, config.init_layers)
  if config.data.mean_rgb is not None:
    return config
  source_mean = source['data'].get('mean_rgb')
  if source_mean is None:
    return config
  config = config.copy_and_resolve_references()
  config.data.mean_rgb = tuple(source_mean)
  logging.info('Using the mean RGB %s of %s.', source_mean, config.init_from)
  return config
