"""The train and eval steps and their jit-compiled, sharded forms (Sec. 3.1).

TrainState holds what a checkpoint saves. The steps know nothing of data pipelines,
checkpoints or logging, so they run (and are benchmarked) without TensorFlow.
"""

import functools
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
from jax.sharding import Mesh
import optax

from vgg_jax.data import device_crops
from vgg_jax import models
from vgg_jax import sharding


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # Updates done so far.
  params: Any
  opt_state: Any
  batch_stats: Any = None  # BatchNorm running statistics (batch_norm=True models only).

  @property
  def variables(self) -> dict[str, Any]:
    """What model.apply takes: {'params'} (and 'batch_stats' for batch-norm models)."""
    if self.batch_stats is None:
      return {'params': self.params}
    return {'params': self.params, 'batch_stats': self.batch_stats}

  def checkpoint_tree(self) -> dict[str, Any]:
    """The saved tree: a plain model's has no batch_stats key (checkpoints before it)."""
    return {'step': self.step, 'opt_state': self.opt_state, **self.variables}


def create_train_state(model: models.VGG, tx, rng) -> TrainState:
  variables = models.init_variables(model, rng)
  params = variables['params']
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    batch_stats=variables.get('batch_stats'))


# --------------------------------------------------------------------------- steps


def classification_metrics(logits, labels):
  """Per-example cross-entropy, top-1 and top-5 mistakes (floats)."""
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  top1_wrong = (jnp.argmax(logits, -1) != labels).astype(jnp.float32)
  k = min(5, logits.shape[-1])
  top5 = jax.lax.top_k(logits, k)[1]
  top5_wrong = 1.0 - jnp.any(top5 == labels[:, None], axis=-1).astype(jnp.float32)
  return loss, top1_wrong, top5_wrong


def after_backward(grads, first_layer: str):
  """grads, each plus 0 * an element of first_layer's gradient (backprop's last).

  That makes every parameter update depend on the whole backward pass, so XLA can
  update the donated parameters in place instead of first copying all of them
  (the backward pass still reads the old weights). Same values: x + 0 * y == x for
  finite y; a non-finite gradient already poisons the update. Applied on the CPU
  backend only, where it was measured to help (docs/performance.md); GPU/TPU
  schedulers were not measured and keep XLA's own order.
  """
  zero = jax.tree_util.tree_leaves(grads[first_layer])[0].ravel()[0] * 0
  return jax.tree_util.tree_map(lambda g: g + zero.astype(g.dtype), grads)


def train_step(state: TrainState, batch, rng, *, model, tx, accum_steps: int = 1,
               in_place_updates: bool = False):
  """One SGD update on the global batch; dropout keys from fold_in(rng, step).

  With accum_steps > 1 the batch is split into that many micro-batches whose
  gradients are averaged: the same update as one big batch, in less memory.
  in_place_updates: apply after_backward (same values; faster on the CPU backend).
  A batch of uint8 windows (data.device_window > 0) is first resampled to its crops.
  """
  batch = device_crops.with_images(batch, model.image_size)
  step_rng = jax.random.fold_in(rng, state.step)

  def loss_fn(params, batch_stats, images, labels, dropout_rng):
    """(mean loss, (top-1 error, updated batch_stats)) on one (micro-)batch."""
    if batch_stats is None:
      logits = model.apply({'params': params}, images, train=True,
                           rngs={'dropout': dropout_rng})
    else:  # BatchNorm: batch statistics over the whole (global) batch, running stats updated.
      logits, updates = model.apply({'params': params, 'batch_stats': batch_stats}, images,
                                    train=True, rngs={'dropout': dropout_rng},
                                    mutable=['batch_stats'])
      batch_stats = updates['batch_stats']
    loss, top1_wrong, _ = classification_metrics(logits, labels)
    return loss.mean(), (top1_wrong.mean(), batch_stats)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if accum_steps == 1:
    (loss, (top1_error, batch_stats)), grads = grad_fn(
        state.params, state.batch_stats, batch['images'], batch['labels'], step_rng)
  else:
    def split(x):  # [B, ...] -> [k, B/k, ...]: micro-batch j holds examples j::k.
      x = x.reshape((x.shape[0] // accum_steps, accum_steps) + x.shape[1:])
      return jnp.moveaxis(x, 1, 0)

    def accumulate(carry, micro):  # Running statistics update once per micro-batch.
      sums, batch_stats = carry
      index, images, labels = micro
      (loss, (err, batch_stats)), grads = grad_fn(state.params, batch_stats, images, labels,
                                                  jax.random.fold_in(step_rng, index))
      sums = jax.tree_util.tree_map(jnp.add, sums, (loss, err, grads))
      return (sums, batch_stats), None

    zeros = (0.0, 0.0, jax.tree_util.tree_map(jnp.zeros_like, state.params))
    micro = (jnp.arange(accum_steps), split(batch['images']), split(batch['labels']))
    (sums, batch_stats), _ = jax.lax.scan(accumulate, (zeros, state.batch_stats), micro)
    loss, top1_error, grads = jax.tree_util.tree_map(lambda x: x / accum_steps, sums)

  if in_place_updates:
    grads = after_backward(grads, models.layer_names(model.variant)[0])
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                            batch_stats=batch_stats)
  metrics = {'loss': loss, 'top1_error': top1_error,
             'learning_rate': opt_state.hyperparams['learning_rate']}  # Used in this update.
  return new_state, metrics


def eval_step(variables, batch, *, model, posteriors: bool = False):
  """Sums over the real (mask=True) examples: loss, top-1 and top-5 mistakes, count.

  posteriors=True: also each example's softmax [B, classes] (for the evaluation report).
  """
  logits = model.apply(variables, batch['images'], train=False)
  loss, top1_wrong, top5_wrong = classification_metrics(logits, batch['labels'])
  mask = batch['mask'].astype(jnp.float32)
  sums = {'loss': jnp.sum(loss * mask), 'top1_wrong': jnp.sum(top1_wrong * mask),
          'top5_wrong': jnp.sum(top5_wrong * mask), 'count': jnp.sum(mask)}
  return (sums, jax.nn.softmax(logits.astype(jnp.float32))) if posteriors else sums


# --------------------------------------------------------------------------- compiled steps


def jit_train_step(model, tx, mesh: Mesh, accum_steps: int = 1):
  """train_step compiled over the mesh: params replicated, batch split, state donated."""
  step = functools.partial(train_step, model=model, tx=tx, accum_steps=accum_steps,
                           in_place_updates=jax.default_backend() == 'cpu')
  replicated, split = sharding.replicated(mesh), sharding.batch_sharding(mesh)
  return jax.jit(step, in_shardings=(replicated, split, replicated),
                 out_shardings=(replicated, replicated), donate_argnums=0)


def jit_eval_step(model, mesh: Mesh, posteriors: bool = False):
  """eval_step compiled over the mesh; its posteriors (if asked for) stay split."""
  step = functools.partial(eval_step, model=model, posteriors=posteriors)
  sums, split = sharding.replicated(mesh), sharding.batch_sharding(mesh)
  return jax.jit(step, in_shardings=(sums, split),
                 out_shardings=(sums, split) if posteriors else sums)


def compute_eval_metrics(eval_fn, variables, batches, mesh: Mesh,
                         collect: Callable[..., Any] | None = None) -> dict[str, float]:
  """Runs eval_fn over the batches; returns loss and top-1/top-5 errors.

  collect: with an eval_fn that gives posteriors, called with this process's rows of
  them and its (host) batch, after each batch.
  """
  totals = None
  for batch in batches:
    sums = eval_fn(variables, sharding.make_global_batch(batch, mesh))
    if collect is not None:
      sums, posteriors = sums
      collect(sharding.local_rows(posteriors), batch)
    totals = sums if totals is None else jax.tree_util.tree_map(jnp.add, totals, sums)
  totals = jax.device_get(totals)
  count = max(float(totals['count']), 1.0)
  return {'eval/loss': float(totals['loss']) / count,
          'eval/top1_error': float(totals['top1_wrong']) / count,
          'eval/top5_error': float(totals['top5_wrong']) / count,
          'eval/num_examples': int(totals['count'])}
