"""The optimiser (Sec. 3.1), the sharded train step and the training loop.

train_and_evaluate(config, workdir) reads top to bottom: config.json -> mesh -> input
iterators -> model and optimizer -> restore_or_init -> loop with logging, evaluation and
checkpoints. Running it again on the same workdir resumes exactly.

TensorFlow is imported only by the input pipeline, and the pipeline only inside
train_and_evaluate, so the step functions (and the benchmark) run without TensorFlow or
ml_collections: `config` is anything with attribute access and .get (a ConfigDict).
"""

import functools
import json
import os
import signal
import time
from typing import Any

from absl import logging
import flax
import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np
import optax

from vgg_jax import checkpointing
from vgg_jax import models

SCHEDULES = ('plateau', 'step', 'cosine')
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}
# Dense bf16 peak FLOP/s per chip, for MFU; matched as substrings of device_kind.
PEAK_FLOPS = {
    'H200': 989e12, 'H100': 989e12, 'A100': 312e12, 'L4': 121e12, 'A10G': 125e12,
    'TPU v6': 918e12, 'TPU v5p': 459e12, 'TPU v5': 197e12, 'TPU v4': 275e12,
}


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # Updates done so far.
  params: Any
  opt_state: Any


# --------------------------------------------------------------------------- model, optimizer


def create_model(model_config, num_classes: int | None = None) -> models.VGG:
  """models.VGG from config.model (dtype given by name)."""
  fields = dict(model_config.items())
  if fields['dtype'] not in DTYPES:
    raise ValueError(f"config.model.dtype={fields['dtype']!r} is not one of {list(DTYPES)}.")
  fields['dtype'] = DTYPES[fields['dtype']]
  if num_classes is not None:
    fields['num_classes'] = num_classes
  return models.VGG(**fields)


def decay_mask(params, decay_biases: bool = False):
  """True where weight decay applies: every kernel, and biases only if asked."""
  def applies(path, _):
    name = path[-1].key if hasattr(path[-1], 'key') else str(path[-1])
    return name != 'bias' or decay_biases
  return jax.tree_util.tree_map_with_path(applies, params)


def frozen_labels(params, config):
  """'frozen' for conv layers when config.freeze_conv_base (conv5_* may stay trainable)."""
  def label(layer):
    frozen = config.get('freeze_conv_base', False) and layer.startswith('conv')
    if frozen and config.get('unfreeze_last_stage', False) and layer.startswith('conv5_'):
      frozen = False
    return 'frozen' if frozen else 'train'
  return {layer: jax.tree_util.tree_map(lambda _: label(layer), p)  # pylint: disable=cell-var-from-loop
          for layer, p in params.items()}


def learning_rate_schedule(config, steps_per_epoch: int, total_steps: int):
  """A float (plateau: changed by the host after evals) or an optax schedule."""
  if config.schedule == 'plateau':
    return config.learning_rate
  if config.schedule == 'step':
    boundaries = {int(e * steps_per_epoch): 0.1 for e in config.step_decay_epochs}
    return optax.piecewise_constant_schedule(config.learning_rate, boundaries)
  if config.schedule == 'cosine':
    return optax.cosine_decay_schedule(config.learning_rate, max(1, total_steps))
  raise ValueError(f'config.schedule={config.schedule!r} is not one of {SCHEDULES}.')


def create_optimizer(config, steps_per_epoch: int, total_steps: int):
  """SGD with momentum; L2 weight decay added to the gradient (Sec. 3.1).

  With config.freeze_conv_base the conv layers get zero updates (and no decay).
  """
  def sgd_with_decay(learning_rate):
    sgd = optax.chain(
        optax.add_decayed_weights(config.weight_decay, mask=functools.partial(
            decay_mask, decay_biases=config.decay_biases)),
        optax.sgd(learning_rate, momentum=config.momentum))
    if not config.get('freeze_conv_base', False):
      return sgd
    return optax.multi_transform({'train': sgd, 'frozen': optax.set_to_zero()},
                                 functools.partial(frozen_labels, config=config))
  schedule = learning_rate_schedule(config, steps_per_epoch, total_steps)
  return optax.inject_hyperparams(sgd_with_decay)(learning_rate=schedule)


def current_learning_rate(state: TrainState) -> jax.Array:
  return state.opt_state.hyperparams['learning_rate']


def set_learning_rate(state: TrainState, value: float) -> TrainState:
  """state with the optimizer's learning rate set (the plateau schedule's lever)."""
  old = current_learning_rate(state)
  new = jax.device_put(jnp.asarray(value, old.dtype), old.sharding)
  hyperparams = dict(state.opt_state.hyperparams, learning_rate=new)
  return state.replace(opt_state=state.opt_state._replace(hyperparams=hyperparams))


def init_params(model: models.VGG, rng):
  size = model.image_size
  return model.init(rng, jnp.zeros((1, size, size, 3), jnp.float32))['params']


def create_train_state(model: models.VGG, tx, rng) -> TrainState:
  params = init_params(model, rng)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


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
  finite y; a non-finite gradient already poisons the update. Measured: -1.5% step
  time for VGG-A on CPU (docs/performance.md).
  """
  zero = jax.tree_util.tree_leaves(grads[first_layer])[0].ravel()[0] * 0
  return jax.tree_util.tree_map(lambda g: g + zero.astype(g.dtype), grads)


def train_step(state: TrainState, batch, rng, *, model, tx, accum_steps: int = 1):
  """One SGD update on the global batch; dropout keys from fold_in(rng, step).

  With accum_steps > 1 the batch is split into that many micro-batches whose
  gradients are averaged: the same update as one big batch, in less memory.
  """
  step_rng = jax.random.fold_in(rng, state.step)

  def loss_fn(params, images, labels, dropout_rng):
    logits = model.apply({'params': params}, images, train=True,
                         rngs={'dropout': dropout_rng})
    loss, top1_wrong, _ = classification_metrics(logits, labels)
    return loss.mean(), top1_wrong.mean()

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if accum_steps == 1:
    (loss, top1_error), grads = grad_fn(state.params, batch['images'], batch['labels'],
                                        step_rng)
  else:
    def split(x):  # [B, ...] -> [k, B/k, ...]: micro-batch j holds examples j::k.
      x = x.reshape((x.shape[0] // accum_steps, accum_steps) + x.shape[1:])
      return jnp.moveaxis(x, 1, 0)

    def accumulate(carry, micro):
      index, images, labels = micro
      (loss, err), grads = grad_fn(state.params, images, labels,
                                   jax.random.fold_in(step_rng, index))
      sums = jax.tree_util.tree_map(jnp.add, carry, (loss, err, grads))
      return sums, None

    zeros = (0.0, 0.0, jax.tree_util.tree_map(jnp.zeros_like, state.params))
    micro = (jnp.arange(accum_steps), split(batch['images']), split(batch['labels']))
    sums, _ = jax.lax.scan(accumulate, zeros, micro)
    loss, top1_error, grads = jax.tree_util.tree_map(lambda x: x / accum_steps, sums)

  grads = after_backward(grads, models.layer_names(model.variant)[0])
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
  metrics = {'loss': loss, 'top1_error': top1_error,
             'learning_rate': opt_state.hyperparams['learning_rate']}  # Used in this update.
  return new_state, metrics


def eval_step(params, batch, *, model):
  """Sums over the real (mask=True) examples: loss, top-1 and top-5 mistakes, count."""
  logits = model.apply({'params': params}, batch['images'], train=False)
  loss, top1_wrong, top5_wrong = classification_metrics(logits, batch['labels'])
  mask = batch['mask'].astype(jnp.float32)
  return {'loss': jnp.sum(loss * mask), 'top1_wrong': jnp.sum(top1_wrong * mask),
          'top5_wrong': jnp.sum(top5_wrong * mask), 'count': jnp.sum(mask)}


# --------------------------------------------------------------------------- sharding


def create_mesh() -> Mesh:
  """A 1-D ('data',) mesh over all devices of all processes."""
  return Mesh(np.asarray(jax.devices()), ('data',))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P('data'))


def make_global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Host-local numpy batch -> global arrays split over the 'data' axis."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v)
          for k, v in local_batch.items()}


def jit_train_step(model, tx, mesh: Mesh, accum_steps: int = 1):
  """train_step compiled over the mesh: params replicated, batch split, state donated."""
  step = functools.partial(train_step, model=model, tx=tx, accum_steps=accum_steps)
  return jax.jit(step, in_shardings=(replicated(mesh), batch_sharding(mesh), replicated(mesh)),
                 out_shardings=(replicated(mesh), replicated(mesh)), donate_argnums=0)


def jit_eval_step(model, mesh: Mesh):
  step = functools.partial(eval_step, model=model)
  return jax.jit(step, in_shardings=(replicated(mesh), batch_sharding(mesh)),
                 out_shardings=replicated(mesh))


def check_batch_size(global_batch_size: int, num_devices: int, accum_steps: int = 1,
                     name: str = 'global_batch_size'):
  if accum_steps < 1:
    raise ValueError(f'grad_accum_steps must be >= 1, got {accum_steps}.')
  if global_batch_size % (num_devices * accum_steps):
    raise ValueError(
        f'config.{name}={global_batch_size} is not divisible by the {num_devices} devices'
        + (f' x {accum_steps} accumulation steps' if accum_steps > 1 else '')
        + '; choose a multiple of ' + str(num_devices * accum_steps) + '.')


def peak_flops(device_kind: str) -> float | None:
  for name, flops in PEAK_FLOPS.items():
    if name.lower() in device_kind.lower():
      return flops
  return None


def step_flops(compiled) -> float | None:
  """FLOPs of one compiled step per device, from XLA's cost analysis."""
  try:
    analysis = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  return float(analysis['flops']) if analysis and 'flops' in analysis else None


# --------------------------------------------------------------------------- the loop


class MetricWriter:
  """metrics.jsonl (one JSON object per logged step) and TensorBoard, on process 0."""

  def __init__(self, workdir: str, resume_step: int):
    self.active = jax.process_index() == 0
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self.summary = None
    if not self.active:
      return
    if os.path.exists(self.path):  # Drop lines a crash left beyond the checkpoint.
      with open(self.path) as f:
        kept = [line for line in f if line.strip() and json.loads(line)['step'] <= resume_step]
      with open(self.path, 'w') as f:
        f.writelines(kept)
    try:
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
      self.summary = tf.summary.create_file_writer(os.path.join(workdir, 'tensorboard'))
    except ImportError:
      logging.warning('TensorFlow is not installed: no TensorBoard event files.')

  def write(self, step: int, metrics: dict[str, float]):
    if not self.active:
      return
    with open(self.path, 'a') as f:
      f.write(json.dumps({'step': step, **metrics}) + '\n')
    if self.summary is not None:
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
      with self.summary.as_default(step=step):
        for name, value in metrics.items():
          tf.summary.scalar(name, value)
      self.summary.flush()


class Preemption:
  """Turns SIGTERM into a flag the loop checks after each step (all processes agree)."""

  def __init__(self):
    self.requested = False
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning('SIGTERM received: saving a checkpoint after this step.')
    self.requested = True

  def check(self) -> bool:
    if jax.process_count() == 1:
      return self.requested
    flags = multihost_utils.process_allgather(np.asarray(self.requested))
    return bool(np.any(flags))

  def close(self):
    signal.signal(signal.SIGTERM, self._previous)


def check_finite(pending: list[tuple[int, Any]]):
  """Raises on the first non-finite loss among pending (step, device loss) pairs."""
  if not pending:
    return
  losses = jax.device_get([loss for _, loss in pending])
  for (step, _), loss in zip(pending, losses):
    if not np.isfinite(loss):
      raise FloatingPointError(f'Loss is {float(loss)} at step {step}: training stopped. '
                               'The last checkpoint before it is intact.')
  pending.clear()


def model_signature(model_config) -> dict[str, Any]:
  """The fields a checkpoint's parameters depend on."""
  return {k: model_config[k] for k in ('variant', 'num_classes', 'width', 'fc_width',
                                       'image_size')}


def check_compatible(workdir: str, stored_meta: dict[str, Any], model_config,
                     num_classes: int):
  """Raises if workdir's checkpoints are of another model than the config's."""
  stored = model_signature(dict(stored_meta['config']['model'],
                                num_classes=stored_meta['num_classes']))
  wanted = model_signature(dict(model_config.items(), num_classes=num_classes))
  diffs = [f'{k}: checkpoint {stored[k]!r} vs config {wanted[k]!r}'
           for k in stored if stored[k] != wanted[k]]
  if diffs:
    raise ValueError(f'{workdir} holds checkpoints of another model ({"; ".join(diffs)}). '
                     'Use another --workdir, or match the config to the checkpoint.')


def evaluate(eval_fn, params, batches, mesh: Mesh) -> dict[str, float]:
  """Runs eval_fn over the iterator; returns loss and top-1/top-5 errors."""
  totals = None
  for batch in batches:
    sums = eval_fn(params, make_global_batch(batch, mesh))
    totals = sums if totals is None else jax.tree_util.tree_map(jnp.add, totals, sums)
  totals = jax.device_get(totals)
  count = max(float(totals['count']), 1.0)
  return {'eval/loss': float(totals['loss']) / count,
          'eval/top1_error': float(totals['top1_wrong']) / count,
          'eval/top5_error': float(totals['top5_wrong']) / count,
          'eval/num_examples': int(totals['count'])}


def update_plateau(plateau: dict[str, Any], error: float, config) -> tuple[dict[str, Any], bool]:
  """Sec. 3.1: divide the lr by 10 when eval accuracy stops improving, at most 3 times."""
  plateau = dict(plateau)
  if error < plateau['best_error'] - config.plateau_min_delta:
    plateau['best_error'], plateau['bad_evals'] = error, 0
    return plateau, False
  plateau['bad_evals'] += 1
  if plateau['bad_evals'] >= config.plateau_patience and (
      plateau['decays'] < config.plateau_max_decays):
    plateau['decays'] += 1
    plateau['bad_evals'] = 0
    return plateau, True
  return plateau, False


def format_duration(seconds: float) -> str:
  seconds = int(max(0, seconds))
  return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'


def initial_state(config, model, tx, mesh, rng):
  """Fresh train state on the mesh, with the Sec. 3.1 warm start if config.init_from."""
  state = jax.jit(functools.partial(create_train_state, model, tx),
                  out_shardings=replicated(mesh))(rng)
  if not config.init_from:
    return state
  source_params, source_meta = checkpointing.load_params(config.init_from)
  source_variant = source_meta.get('config', {}).get('model', {}).get('variant', '?')
  params = checkpointing.copy_layers(jax.device_get(state.params), source_params,
                                     config.init_layers,
                                     f'{config.init_from} (variant {source_variant})')
  logging.info('Warm start: copied %s from %s.', ', '.join(config.init_layers),
               config.init_from)
  params = jax.device_put(params, replicated(mesh))
  return state.replace(params=params, opt_state=tx.init(params))


def train_and_evaluate(config, workdir: str) -> dict[str, Any]:
  """Trains (or resumes) in workdir; returns the final metrics."""
  from vgg_jax import input_pipeline  # pylint: disable=g-import-not-at-top  (TensorFlow)
  workdir = os.path.abspath(workdir)
  process_index, process_count = jax.process_index(), jax.process_count()

  # Mesh and batch checks.
  mesh = create_mesh()
  check_batch_size(config.global_batch_size, mesh.size, config.grad_accum_steps)
  check_batch_size(config.eval_batch_size, mesh.size, name='eval_batch_size')

  # Input sources; an imported or warm-start checkpoint supplies its mean RGB.
  if config.init_from and config.data.mean_rgb is None:
    source_mean = checkpointing.load_meta(config.init_from)['config']['data'].get('mean_rgb')
    if source_mean is not None:
      config = config.copy_and_resolve_references()
      config.data.mean_rgb = tuple(source_mean)
      logging.info('Using the mean RGB %s of %s.', source_mean, config.init_from)
  train_source = input_pipeline.load_train_source(config.data, process_index, process_count)
  eval_source = input_pipeline.load_source(config.data, config.data.eval_split,
                                           process_index, process_count)
  num_classes = config.model.num_classes or len(train_source.class_names)
  steps_per_epoch = max(1, train_source.total_examples // config.global_batch_size)
  total_steps = (config.num_train_steps if config.num_train_steps > 0 else
                 max(1, int(round(config.num_epochs * steps_per_epoch))))

  # Model and optimizer.
  model = create_model(config.model, num_classes)
  tx = create_optimizer(config, steps_per_epoch, total_steps)
  rng = jax.random.key(config.seed)
  init_rng, dropout_rng = jax.random.split(rng)

  # Restore or initialise; refuse a workdir holding another model's checkpoints.
  manager = checkpointing.create_manager(workdir, config.keep_checkpoints)
  latest = manager.latest_step()
  if latest is not None:
    check_compatible(workdir, checkpointing.read_meta(manager, latest), config.model,
                     num_classes)
  abstract_state = jax.eval_shape(functools.partial(create_train_state, model, tx), init_rng)
  abstract_state = jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated(mesh)),
      abstract_state)
  restored = checkpointing.restore_latest(manager, abstract_state)
  plateau = {'best_error': 2.0, 'bad_evals': 0, 'decays': 0}  # Errors are <= 1.
  if restored is not None:
    state, meta = restored
    plateau = meta['plateau']
    logging.info('Resumed from step %d in %s.', int(state.step), workdir)
  else:
    state = initial_state(config, model, tx, mesh, init_rng)
  start_step = int(state.step)
  if process_index == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2))

  # Input iterators, positioned where the state stands.
  train_iter = input_pipeline.create_train_iterator(
      config.data, image_size=model.image_size, global_batch_size=config.global_batch_size,
      seed=config.seed, start_step=start_step, process_index=process_index,
      process_count=process_count, cache_dir=workdir, source=train_source)
  make_eval_iter = functools.partial(
      input_pipeline.create_eval_iterator, config.data, image_size=model.image_size,
      global_batch_size=config.eval_batch_size, process_index=process_index,
      process_count=process_count, cache_dir=workdir, source=eval_source)

  # Compile.
  train_fn = jit_train_step(model, tx, mesh, config.grad_accum_steps)
  eval_fn = jit_eval_step(model, mesh)
  first_batch = make_global_batch(next(train_iter), mesh)
  compile_start = time.perf_counter()
  train_fn = train_fn.lower(state, first_batch, dropout_rng).compile()
  compile_s = time.perf_counter() - compile_start
  flops, peak = step_flops(train_fn), peak_flops(jax.devices()[0].device_kind)
  logging.info('Compiled the train step in %.1fs (%s devices, %d processes); %d steps/epoch, '
               '%d steps in all.', compile_s, mesh.size, process_count, steps_per_epoch,
               total_steps)

  def meta(step, eval_metrics):
    return {'config': json.loads(config.to_json_best_effort()), 'step': step,
            'data_position': step * config.global_batch_size, 'plateau': plateau,
            'class_names': train_source.class_names, 'num_classes': num_classes,
            'eval': eval_metrics or {}}

  writer = MetricWriter(workdir, start_step)
  preemption = Preemption()
  pending_losses, last_eval, summary = [], {}, {}
  window_start, window_steps = time.perf_counter(), 0
  batch = first_batch
  step = start_step
  try:
    while step < total_steps:
      if batch is None:
        batch = make_global_batch(next(train_iter), mesh)
      state, metrics = train_fn(state, batch, dropout_rng)
      batch = None
      step += 1
      window_steps += 1
      pending_losses.append((step, metrics['loss']))
      is_last = step == total_steps
      preempted = preemption.check()

      if step % config.log_every_steps == 0 or is_last:
        check_finite(pending_losses)
        metrics = jax.device_get(metrics)
        elapsed = time.perf_counter() - window_start
        step_s = elapsed / window_steps
        summary = {'train/loss': float(metrics['loss']),
                   'train/top1_error': float(metrics['top1_error']),
                   'train/learning_rate': float(metrics['learning_rate']),
                   'train/images_per_second': config.global_batch_size / step_s}
        if flops and peak:
          summary['train/mfu'] = flops / step_s / peak
        writer.write(step, summary)
        logging.info('step %d/%d  loss %.4f  top1_err %.3f  lr %.2e  %.0f img/s  ETA %s',
                     step, total_steps, summary['train/loss'], summary['train/top1_error'],
                     summary['train/learning_rate'], summary['train/images_per_second'],
                     format_duration(step_s * (total_steps - step)))
        window_start, window_steps = time.perf_counter(), 0

      eval_metrics = None
      if step % config.eval_every_steps == 0 or is_last:
        jax.block_until_ready(state)  # Queued train steps count as training time.
        eval_start = time.perf_counter()
        eval_metrics = evaluate(eval_fn, state.params, make_eval_iter(), mesh)
        last_eval = eval_metrics
        writer.write(step, eval_metrics)
        logging.info('eval at step %d: loss %.4f  top1_err %.4f  top5_err %.4f  (%d images)',
                     step, eval_metrics['eval/loss'], eval_metrics['eval/top1_error'],
                     eval_metrics['eval/top5_error'], eval_metrics['eval/num_examples'])
        if config.schedule == 'plateau':
          plateau, decay = update_plateau(plateau, eval_metrics['eval/top1_error'], config)
          if decay:
            new_lr = config.learning_rate * config.plateau_factor**plateau['decays']
            state = set_learning_rate(state, new_lr)
            logging.info('Eval error stalled: learning rate divided by 10 to %.2e.', new_lr)
        window_start += time.perf_counter() - eval_start  # Keep eval out of images/s.

      if step % config.checkpoint_every_steps == 0 or eval_metrics or is_last or preempted:
        check_finite(pending_losses)  # Never save parameters after a non-finite loss.
        checkpointing.save(manager, step, state, meta(step, eval_metrics),
                           {checkpointing.BEST_METRIC: eval_metrics[checkpointing.BEST_METRIC]}
                           if eval_metrics else None)
      if preempted:
        manager.wait_until_finished()
        logging.warning('Preempted: saved step %d in %s; rerun the same command to resume.',
                        step, workdir)
        return {'step': step, 'preempted': True, **summary, **last_eval}
  finally:
    manager.wait_until_finished()
    manager.close()
    preemption.close()
  return {'step': step, 'preempted': False, 'compile_s': compile_s, **summary, **last_eval}
