"""The sharded train step and the training loop (Sec. 3.1).

train_and_evaluate(config, workdir) reads top to bottom: config checks -> mesh -> data
sources -> model and optimizer -> restore or initialise -> config.json -> input
iterators -> compile -> the step loop with logging, evaluation and checkpoints.
Running it again on the same workdir resumes exactly.

TensorFlow is imported only by the input pipeline (vgg_jax.data), and that only inside
train_and_evaluate, so the step functions (and the benchmark) run without TensorFlow.
"""

import dataclasses
import functools
import json
import os
import shutil
import time
from typing import Any, Callable, Iterator, NamedTuple

from absl import logging
import jax
from jax.sharding import Mesh
import numpy as np

from vgg_jax import checkpointing
from vgg_jax import data
from vgg_jax.evaluation import report
from vgg_jax import files
from vgg_jax import models
from vgg_jax import sharding
from vgg_jax.training import config_checks
from vgg_jax.training import monitoring
from vgg_jax.training import optim
from vgg_jax.training import peers
from vgg_jax.training import preemption
from vgg_jax.training import console
from vgg_jax.training import steps
from vgg_jax.training import warm_start


# --------------------------------------------------------------------------- set-up stages


def restore_or_init(model_config, source: warm_start.WarmStart, workdir, manager, model, tx,
                    mesh, rng):
  """(state, plateau) from the newest checkpoint that restores, else fresh (warm-started).

  Refuses a workdir holding another model's checkpoints before anything is written.
  """
  latest = manager.latest_step()
  if latest is not None:
    checkpointing.check_compatible(workdir, checkpointing.read_meta(manager, latest),
                                   model_config, model.num_classes)
  abstract = jax.eval_shape(functools.partial(steps.create_train_state, model, tx), rng)
  replicated = sharding.replicated(mesh)
  abstract = jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
      abstract.checkpoint_tree())
  restored = checkpointing.restore_latest(manager, abstract)
  if restored is None:
    return (warm_start.initial_state(model, tx, mesh, rng, source.source, source.layers),
            optim.Plateau())
  tree, meta = restored
  state = steps.TrainState(**tree)
  logging.info('Resumed from step %d in %s.', int(state.step), workdir)
  return state, optim.Plateau(**meta['plateau'])


def write_config(config, workdir: str):
  """workdir/config.json (process 0), written whole or not at all."""
  if jax.process_index() != 0:
    return
  os.makedirs(workdir, exist_ok=True)
  files.write_file_atomically(os.path.join(workdir, 'config.json'),
                                   config.to_json_best_effort(indent=2))


def compile_train_step(model, tx, mesh, grad_accum_steps: int, state, first_batch, rng):
  """The train step compiled for these shapes, its compile time and FLOPs per step."""
  start = time.perf_counter()
  compiled = steps.jit_train_step(model, tx, mesh, grad_accum_steps).lower(
      state, first_batch, rng).compile()
  return compiled, time.perf_counter() - start, monitoring.step_flops(compiled)


# --------------------------------------------------------------------------- the loop


class Loop(NamedTuple):
  """What the step loop needs, built by train_and_evaluate's set-up."""
  config: Any
  optimizer: optim.OptimizerConfig
  workdir: str
  mesh: Mesh
  total_steps: int
  train_fn: Callable[..., Any]
  eval_fn: Callable[..., Any]
  report_eval_fn: Callable[..., Any]  # eval_fn with posteriors; compiled at its first call.
  train_iter: Iterator[dict[str, np.ndarray]]
  make_eval_iter: Callable[[], Iterator[dict[str, np.ndarray]]]
  manager: Any
  writer: monitoring.MetricWriter
  flops_per_step: float | None
  class_names: list[str]
  num_classes: int
  mean_rgb: Any  # What the eval images have had subtracted (for the report's pictures).


def log_progress(loop: Loop, step: int, metrics, throughput: monitoring.Throughput):
  """The progress line and metrics.jsonl row of a logging step; returns the summary."""
  metrics = jax.device_get(metrics)
  step_s = throughput.step_seconds()
  summary = {'train/loss': float(metrics['loss']),
             'train/top1_error': float(metrics['top1_error']),
             'train/learning_rate': float(metrics['learning_rate']),
             'train/images_per_second': loop.config.global_batch_size / step_s}
  peak = monitoring.peak_flops(jax.devices()[0].device_kind)
  if loop.flops_per_step and peak:
    summary['train/mfu'] = loop.flops_per_step / step_s / peak
  loop.writer.write(step, summary)
  logging.info('step %d/%d  loss %.4f  top-1 error %s  lr %.2e  %.0f img/s  ETA %s',
               step, loop.total_steps, summary['train/loss'],
               console.format_percent(summary['train/top1_error']),
               summary['train/learning_rate'], summary['train/images_per_second'],
               monitoring.format_duration(step_s * (loop.total_steps - step)))
  throughput.reset()
  return summary


def evaluate(loop: Loop, step: int, state, final: bool = False) -> dict[str, float]:
  """Eval metrics at `step`, written and logged.

  final (the last step's evaluation, when config.eval.report): the same pass also
  writes the evaluation report (vgg_jax.evaluation.report) into the workdir as eval_final_*.
  """
  if final and loop.config.eval.get('report', True):
    metrics = evaluate_with_report(loop, step, state)
  else:
    metrics = steps.compute_eval_metrics(loop.eval_fn, state.variables, loop.make_eval_iter(),
                                         loop.mesh)
  loop.writer.write(step, metrics)
  logging.info('eval at step %d: loss %.4f  %s  (%d images)', step, metrics['eval/loss'],
               console.format_errors(metrics, loop.num_classes),
               metrics['eval/num_examples'])
  return metrics


def adjust_learning_rate(optimizer: optim.OptimizerConfig, state, plateau: optim.Plateau,
                         top1_error: float):
  """(state, plateau) after the plateau schedule's decision on an eval error (Sec. 3.1)."""
  if optimizer.schedule != 'plateau':
    return state, plateau
  plateau, decay = optim.update_plateau(plateau, top1_error, optimizer)
  if decay:
    new_lr = optim.plateau_learning_rate(plateau, optimizer.learning_rate,
                                         optimizer.plateau_factor)
    state = state.replace(opt_state=optim.set_learning_rate(state.opt_state, new_lr))
    logging.info('Eval error stalled: learning rate divided by 10 to %.2e.', new_lr)
  return state, plateau


def evaluate_with_report(loop: Loop, step: int, state) -> dict[str, float]:
  """compute_eval_metrics, collecting each example's posterior; then writes the report."""
  collector = report.Collector(loop.num_classes, loop.mean_rgb)

  def collect(posteriors, batch):
    real = batch['mask'].astype(bool)
    collector.add(posteriors[real], batch['labels'][real], batch['images'][real])

  metrics = steps.compute_eval_metrics(loop.report_eval_fn, state.variables,
                                       loop.make_eval_iter(), loop.mesh, collect)
  title = f'step {step}, centre crops: top-1 error {100 * metrics["eval/top1_error"]:.2f}%'
  report.write_merged(collector, loop.workdir, 'eval_final', loop.class_names, title)
  return metrics


def save_checkpoint(loop: Loop, step: int, state, plateau: optim.Plateau, eval_metrics):
  """Starts an asynchronous save of `state` at `step` with its meta."""
  meta = checkpointing.make_meta(
      json.loads(loop.config.to_json_best_effort()), step,
      global_batch_size=loop.config.global_batch_size, num_classes=loop.num_classes,
      class_names=loop.class_names, plateau=dataclasses.asdict(plateau),
      eval_metrics=eval_metrics)
  best = eval_metrics and {checkpointing.BEST_METRIC: eval_metrics[checkpointing.BEST_METRIC]}
  checkpointing.save(loop.manager, step, state.checkpoint_tree(), meta, best or None)


def profile_dir(workdir: str) -> str:
  """Where config.profile_steps' trace goes: workdir/profile (process_N/ in each, if several)."""
  if jax.process_count() == 1:
    return os.path.join(workdir, 'profile')
  return os.path.join(workdir, 'profile', f'process_{jax.process_index()}')


def run_loop(loop: Loop, state, plateau: optim.Plateau, batch, dropout_rng):
  """Steps from state.step to total_steps; logs, evaluates and checkpoints on schedule."""
  config, step = loop.config, int(state.step)
  notice, throughput = preemption.Notice(), monitoring.Throughput()
  profiler = monitoring.StepProfiler(profile_dir(loop.workdir), *(config.profile_steps or (1, 0)))
  pending_losses, summary, last_eval = [], {}, {}
  try:
    while step < loop.total_steps:
      profiler.before_step(step + 1)
      # Named in a profiler trace: the step, and within it the wait for its input.
      with jax.profiler.StepTraceAnnotation('train', step_num=step + 1):
        if batch is None:
          with jax.profiler.TraceAnnotation('input'):
            batch = sharding.make_global_batch(next(loop.train_iter), loop.mesh)
        state, metrics = loop.train_fn(state, batch, dropout_rng)
      batch, step = None, step + 1
      profiler.after_step(step, state)
      throughput.steps += 1
      pending_losses.append((step, metrics['loss']))
      is_last = step == loop.total_steps
      preempted = notice.check(step)
      if step % config.log_every_steps == 0 or is_last:
        monitoring.check_finite(pending_losses)
        summary = log_progress(loop, step, metrics, throughput)
      eval_metrics = None
      if step % config.eval_every_steps == 0 or is_last:
        jax.block_until_ready(state)  # Queued train steps count as training time.
        eval_start = time.perf_counter()
        eval_metrics = evaluate(loop, step, state, is_last)
        state, plateau = adjust_learning_rate(loop.optimizer, state, plateau,
                                              eval_metrics['eval/top1_error'])
        last_eval = eval_metrics
        throughput.exclude(time.perf_counter() - eval_start)  # Keep eval out of images/s.
      if step % config.checkpoint_every_steps == 0 or eval_metrics or is_last or preempted:
        monitoring.check_finite(pending_losses)  # Never save parameters after a NaN loss.
        save_checkpoint(loop, step, state, plateau, eval_metrics)
      if preempted:
        loop.manager.wait_until_finished()
        logging.warning('Preempted: saved step %d in %s; rerun the same command to resume.',
                        step, loop.workdir)
        return {'step': step, 'preempted': True, **summary, **last_eval}
  finally:
    loop.manager.wait_until_finished()
    loop.manager.close()
    notice.close()
    profiler.close()
  return {'step': step, 'preempted': False, **summary, **last_eval}


def train_and_evaluate(config, workdir: str) -> dict[str, Any]:
  """Trains (or resumes) in workdir; returns the final metrics.

  In a multi-process run a lost process ends this one with the lost-peer line and exit
  75 (vgg_jax.training.peers), whatever it was doing: restoring, compiling, stepping, evaluating
  or saving.
  """
  config_checks.check_train_config(config)
  workdir = os.path.abspath(workdir)
  before = listing(workdir)
  watchdog = peers.PeerWatchdog(workdir, config.peer_timeout_seconds)
  try:
    return run_stages(config, workdir)
  except Exception as error:  # pylint: disable=broad-except
    watchdog.explain(error)  # A failed collective: exits here if a peer was lost.
    remove_created(workdir, before)
    raise
  finally:
    watchdog.close()


def listing(workdir: str) -> set[str] | None:
  """The names in workdir, or None when it does not exist."""
  return set(os.listdir(workdir)) if os.path.isdir(workdir) else None


def remove_created(workdir: str, before: set[str] | None):
  """After a failure, removes what this run created in workdir if it produced nothing
  (process 0): a run that never logged a step leaves no checkpoints dir, caches or
  config.json. Names that were there before it started are kept, and so is everything in
  a workdir with a saved checkpoint or a logged metrics row."""
  checkpoints = checkpointing.checkpoint_dir(workdir)
  metrics = os.path.join(workdir, 'metrics.jsonl')
  if (jax.process_index() != 0 or not os.path.isdir(workdir) or os.path.isdir(checkpoints)
      and any(name.isdigit() for name in os.listdir(checkpoints))
      or os.path.isfile(metrics) and os.path.getsize(metrics)):
    return
  created = sorted(set(os.listdir(workdir)) - (before or set()))
  for name in created:
    path = os.path.join(workdir, name)
    if os.path.isdir(path) and not os.path.islink(path):
      shutil.rmtree(path)
    else:
      os.remove(path)
  if before is None:
    os.rmdir(workdir)
  if created:
    logging.info('Removed what this run had created in %s: %s.', workdir, ', '.join(created))


def load_sources(data_config, workdir: str, shard: data.Shard):
  """(train, eval) sources of this process; image folders are checked here, before
  anything is written to workdir."""
  # Imported here, not at the top: the input pipeline imports TensorFlow, which the step
  # functions and the benchmark (on machines without TensorFlow) must not need.
  from vgg_jax.data import sources  # pylint: disable=g-import-not-at-top
  train = sources.load_train_source(data_config, shard.index, shard.count, cache_dir=workdir)
  evaluation = sources.load_source(data_config, data_config.eval_split, shard.index,
                                   shard.count, cache_dir=workdir)
  return train, evaluation


def count_steps(train_examples: int, global_batch_size: int, num_train_steps: int,
                num_epochs: float) -> tuple[int, int]:
  """(steps per epoch, total steps): num_train_steps when > 0, else num_epochs' worth."""
  steps_per_epoch = max(1, train_examples // global_batch_size)
  total_steps = (num_train_steps if num_train_steps > 0 else
                 max(1, int(round(num_epochs * steps_per_epoch))))
  return steps_per_epoch, total_steps


def create_model(model_config, num_classes: int, optimizer: optim.OptimizerConfig):
  """The net, with a frozen base's BatchNorm layers frozen too.

  Those keep their (imported) statistics: in training they normalise with them and leave
  them as they are, as Keras does for frozen layers.
  """
  model = models.create_model(model_config, num_classes)
  norms = [layer.name for layer in model.layer_table if layer.kind == 'bn']
  return model.clone(frozen_norms=tuple(n for n in norms if optim.is_frozen(
      n, optimizer.freeze_conv_base, optimizer.unfreeze_last_stage)))


def run_stages(config, workdir: str) -> dict[str, Any]:
  """train_and_evaluate's stages, top to bottom; config checked, workdir absolute."""
  from vgg_jax.data import iterators  # pylint: disable=g-import-not-at-top
  from vgg_jax.data import statistics  # pylint: disable=g-import-not-at-top
  shard = data.Shard(jax.process_index(), jax.process_count())
  mesh = sharding.create_mesh()
  sharding.check_batch_size(config.global_batch_size, mesh.size, config.grad_accum_steps)
  sharding.check_batch_size(config.eval_batch_size, mesh.size, name='eval_batch_size')

  # Data sources; an imported or warm-start checkpoint supplies its mean RGB.
  config = warm_start.with_source(config)
  train_source, eval_source = load_sources(config.data, workdir, shard)
  num_classes = config.model.num_classes or len(train_source.class_names)
  steps_per_epoch, total_steps = count_steps(train_source.total_examples,
                                             config.global_batch_size, config.num_train_steps,
                                             config.num_epochs)

  # Model, optimizer, state.
  optimizer = optim.OptimizerConfig.from_config(config.optimizer)
  model = create_model(config.model, num_classes, optimizer)
  tx = optim.create_optimizer(optimizer, steps_per_epoch, total_steps)
  init_rng, dropout_rng = jax.random.split(jax.random.key(config.seed))
  manager = checkpointing.create_manager(workdir, config.keep_checkpoints)
  state, plateau = restore_or_init(
      config.model, warm_start.WarmStart(config.init_from, config.init_layers), workdir,
      manager, model, tx, mesh, init_rng)
  write_config(config, workdir)
  if jax.process_index() == 0:
    console.log_summary(config, model, state, (train_source, eval_source), mesh, total_steps,
                        workdir)

  # Input iterators, positioned where the state stands.
  common = dict(image_size=model.image_size, shard=shard, cache_dir=workdir)
  train_iter = iterators.create_train_iterator(
      config.data, global_batch_size=config.global_batch_size, seed=config.seed,
      start_step=int(state.step), source=train_source, **common)
  make_eval_iter = functools.partial(
      iterators.create_eval_iterator, config.data, global_batch_size=config.eval_batch_size,
      source=eval_source, **common)

  # Compile, then loop.
  first_batch = sharding.make_global_batch(next(train_iter), mesh)
  train_fn, compile_s, flops = compile_train_step(model, tx, mesh, config.grad_accum_steps,
                                                  state, first_batch, dropout_rng)
  logging.info('Compiled the train step in %.1fs (%s devices, %d processes); %d steps/epoch, '
               '%d steps in all.', compile_s, mesh.size, shard.count, steps_per_epoch,
               total_steps)
  loop = Loop(config, optimizer, workdir, mesh, total_steps, train_fn,
              steps.jit_eval_step(model, mesh), steps.jit_eval_step(model, mesh, True),
              train_iter, make_eval_iter, manager,
              monitoring.MetricWriter(workdir, int(state.step)), flops,
              train_source.class_names, num_classes,
              statistics.rgb_statistics(config.data, workdir)['mean_rgb'])
  result = run_loop(loop, state, plateau, first_batch, dropout_rng)
  return {**result, 'compile_s': compile_s, 'num_classes': num_classes}
