"""What a training run shows and watches: metrics files, throughput and MFU, NaN losses,
and a profiler trace of chosen steps."""

import json
import os
import time
from typing import Any

from absl import logging
import jax
import numpy as np

from vgg_jax import files

# Dense bf16 peak FLOP/s per chip, for MFU; matched as substrings of device_kind.
PEAK_FLOPS = {
    'H200': 989e12, 'H100': 989e12, 'A100': 312e12, 'L4': 121e12, 'A10G': 125e12,
    'TPU v6': 918e12, 'TPU v5p': 459e12, 'TPU v5': 197e12, 'TPU v4': 275e12,
}


def read_metrics(path: str) -> list[dict[str, Any]]:
  """The rows of a metrics.jsonl; a line a crash left half-written is dropped, with a warning."""
  rows = []
  with open(path) as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:
        logging.warning('%s line %d is torn (a crash while it was written): dropped.',
                        path, number)
  return rows


class MetricWriter:
  """metrics.jsonl (one JSON object per logged step) and TensorBoard, on process 0."""

  def __init__(self, workdir: str, resume_step: int):
    self.active = jax.process_index() == 0
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self.summary = self.scalar = None
    if not self.active:
      return
    if os.path.exists(self.path):  # Drop rows a crash left beyond the checkpoint.
      kept = [row for row in read_metrics(self.path) if row['step'] <= resume_step]
      files.write_file_atomically(self.path, ''.join(json.dumps(row) + '\n' for row in kept))
    # Imported here, not at the top: TensorFlow is optional, and the benchmark and the
    # plotting scripts import this module without needing it.
    try:
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
    except ImportError:
      logging.warning('TensorFlow is not installed: no TensorBoard event files.')
      return
    self.summary = tf.summary.create_file_writer(os.path.join(workdir, 'tensorboard'))
    self.scalar = tf.summary.scalar

  def write(self, step: int, metrics: dict[str, float]):
    if not self.active:
      return
    with open(self.path, 'a') as f:
      f.write(json.dumps({'step': step, **metrics}) + '\n')
    if self.summary is not None:
      with self.summary.as_default(step=step):
        for name, value in metrics.items():
          self.scalar(name, value)
      self.summary.flush()


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


def format_duration(seconds: float) -> str:
  seconds = int(max(0, seconds))
  return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'


class Throughput:
  """Steps and wall time since the last log line, with eval time kept out."""

  def __init__(self):
    self.reset()

  def reset(self):
    self.start, self.steps = time.perf_counter(), 0

  def exclude(self, seconds: float):
    self.start += seconds

  def step_seconds(self) -> float:
    return (time.perf_counter() - self.start) / max(self.steps, 1)


class StepProfiler:
  """A JAX profiler trace of training steps first .. first + count - 1 (config.profile_steps),
  written under directory for TensorBoard's profile plugin and as a Perfetto trace.

  The trace starts before step `first` fetches its batch, so input waits show, and stops
  once step first + count - 1 has finished on the devices. count 0: off.
  """

  def __init__(self, directory: str, first: int, count: int):
    self.directory, self.first, self.last = directory, first, first + count - 1
    self.tracing = False

  def before_step(self, step: int):
    """Call before step `step` (1-based) starts, with its input."""
    if step == self.first and self.last >= self.first:
      jax.profiler.start_trace(self.directory, create_perfetto_trace=True)
      self.tracing = True
      logging.info('Profiling steps %d-%d into %s.', self.first, self.last, self.directory)

  def after_step(self, step: int, state):
    """Call after step `step` was dispatched; stops once its work is done."""
    if self.tracing and step >= self.last:
      jax.block_until_ready(state)
      self.close()

  def close(self):
    if self.tracing:
      jax.profiler.stop_trace()
      self.tracing = False
      logging.info('Wrote the profiler trace to %s.', self.directory)
