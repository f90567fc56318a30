"""What a training run tells the person who started it: a summary before it compiles,
errors in percent (2 decimals, top-5 only with more than 5 classes) and the closing
sentence. The numbers themselves, as fractions, are in the workdir's metrics.jsonl."""

import os
from typing import Any

from absl import logging
import jax
import numpy as np

from vgg_jax import checkpointing
from vgg_jax.training import monitoring


def format_percent(fraction: float) -> str:
  """An error as every human-facing line shows it: percent with 2 decimals."""
  return f'{100 * fraction:.2f}%'


def format_errors(metrics: dict[str, float], num_classes: int) -> str:
  """'top-1 error 0.67%', with ', top-5 error ...' only when there are more than 5 classes."""
  text = f"top-1 error {format_percent(metrics['eval/top1_error'])}"
  if num_classes > 5:
    text += f", top-5 error {format_percent(metrics['eval/top5_error'])}"
  return text


def format_result(result: dict[str, Any], workdir: str, wall_s: float) -> str:
  """The sentence that ends a training run: the errors in percent (accuracy beside top-1),
  the wall time, and where the checkpoints, metrics and report are."""
  error = result['eval/top1_error']
  top5 = (f", top-5 error {format_percent(result['eval/top5_error'])}," if
          result['num_classes'] > 5 else '')
  return (f"Finished at step {result['step']} in {monitoring.format_duration(wall_s)}: "
          f"top-1 error {format_percent(error)} ({100 * (1 - error):.2f}% accuracy){top5} "
          f"on {result['eval/num_examples']} images. Checkpoints in "
          f"{checkpointing.checkpoint_dir(workdir)}, metrics in "
          f"{os.path.join(workdir, 'metrics.jsonl')}, report in "
          f"{os.path.join(workdir, 'eval_final_classes.md')} (and .csv, .png).")


def log_summary(config, model, state, sources, mesh, total_steps: int, workdir: str):
  """What this run is, before it compiles: model, data, devices, batch, steps, output."""
  train_source, eval_source = sources
  data_config = config.data
  where = {'folder': data_config.folder, 'tfds': data_config.name}.get(data_config.source, '')
  params = sum(int(np.size(x)) for x in jax.tree_util.tree_leaves(state.params))
  logging.info(
      'Run summary:\n  model    VGG-%s%s, width %g, fc_width %d, %s parameters\n'
      '  data     %s%s: %s %d images, %s %d images, %d classes\n'
      '  devices  %d (%s), %d process(es); global batch %d\n'
      '  steps    %d in all, from step %d\n  output   %s',
      model.variant, '_bn' if model.batch_norm else '', model.width, model.fc_width,
      f'{params:,}', data_config.source, f' {where}' if where else '',
      data_config.train_split, train_source.total_examples, data_config.eval_split,
      eval_source.total_examples, len(train_source.class_names), mesh.size,
      mesh.devices.flat[0].platform, jax.process_count(), config.global_batch_size,
      total_steps, int(state.step), workdir)
