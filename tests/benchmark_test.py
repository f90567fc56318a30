"""The benchmark harness: JSON fields, torch comparison, no TensorFlow on its path."""

import json
import os
import subprocess
import sys

import pytest

import data_helpers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
@pytest.mark.parametrize('module', ['benchmark', 'benchmark_device_crops'])
def test_benchmark_path_imports_neither_tensorflow_nor_ml_collections(module):
  code = (f'import sys, experiments.{module}; '
          'bad = [m for m in ("tensorflow", "ml_collections") if m in sys.modules]; '
          'assert not bad, bad')
  result = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.slow
def test_benchmark_prints_json_and_torch_ratios():
  pytest.importorskip('torch', reason='--vs_torch needs torch')
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.benchmark', '--variant=C', '--width=0.125',
       '--fc_width=64', '--batch_size=8', '--steps=2', '--warmup=1', '--repeats=2',
       '--vs_torch'], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = [json.loads(l) for l in result.stdout.splitlines() if l.startswith('{')]
  jax_runs = [l for l in lines if l.get('framework') == 'jax']
  torch_runs = [l for l in lines if l.get('framework') == 'torch']
  assert len(jax_runs) == 2 and len(torch_runs) == 4  # Alternating, two torch layouts.
  for key in ('backend', 'device_kind', 'variant', 'image_size', 'batch_size', 'dtype',
              'compile_s', 'median_step_s', 'min_step_s', 'max_step_s', 'images_per_second',
              'mfu', 'peak_memory_bytes'):
    assert key in jax_runs[0]
  assert jax_runs[0]['conv_impl'] == 'matmul' and jax_runs[0]['mfu'] is None  # CPU: no peak.
  for run in jax_runs + torch_runs:  # Host-memory reuse is the default (Linux/glibc here).
    assert run['host_memory_reused'] is True and run['page_faults_per_step'] >= 0
  run = jax_runs[0]
  assert run['min_step_s'] <= run['median_step_s'] <= run['max_step_s']
  assert abs(run['images_per_second'] - 8 / run['median_step_s']) < 1e-3 * run['images_per_second']
  summaries = [l for l in lines if 'median_ratio' in l]
  assert len(summaries) == 2 and all(len(s['ratios']) == 2 for s in summaries)


@pytest.mark.slow
def test_eval_benchmark_times_every_protocol():
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.benchmark_eval', '--variant=A', '--width=0.0625',
       '--fc_width=16', '--image_size=32', '--scale=36', '--num_images=4', '--batch_size=10'],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = [json.loads(l) for l in result.stdout.splitlines() if l.startswith('{')]
  assert [l['protocol'] for l in lines] == ['single', 'dense', 'multicrop']
  assert [(l['images'], l['views']) for l in lines] == [(4, 4), (4, 8), (1, 50)]
  for line in lines:
    per_image = line['views'] / line['images']
    assert line['images_per_s'] > 0
    assert abs(line['views_per_s'] - per_image * line['images_per_s']) < 0.01 * line['views_per_s']


def test_input_benchmark_imports_beside_the_device_crops_one():
  """benchmark_input imports benchmark_device_crops: their flags must not collide."""
  code = 'import experiments.benchmark_input, experiments.benchmark_device_crops'
  result = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]


def test_device_crops_benchmark_prints_images_per_second():
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.benchmark_device_crops', '--batch_size=4',
       '--calls=1'], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  line = json.loads(result.stdout.strip().splitlines()[-1])
  assert line['device_crops_images_per_s'] > 0 and line['window'] == 352


def test_conv_benchmark_times_layers_and_ab_steps():
  # One device, as users have; compile-bound, so LLVM's passes and host-memory reuse off.
  env = dict(os.environ, XLA_FLAGS=data_helpers.FAST_COMPILE_FLAGS)
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.benchmark_conv', '--layers=2:6:16:8', '--runs=1',
       '--step', '--variant=A', '--width=0.125', '--fc_width=16', '--batch_size=2',
       '--steps=2', '--noreuse_host_memory'],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  layer, step = (json.loads(l) for l in result.stdout.strip().splitlines()[-2:])
  assert layer['layer'] == '2:6:16:8'
  assert layer['conv_as_matmul'] > 0 and layer['conv_kernel_rows'] > 0
  assert step['steps_each'] == 2 and step['old_patches_s'] > 0 and step['new_s'] > 0
  # The ratio is rounded to 3 decimals and each time to 1 us (steps here are ~3 ms).
  assert step['new_over_old'] == pytest.approx(step['new_s'] / step['old_patches_s'], abs=2e-3)


@pytest.mark.slow
def test_dists_benchmark_times_both_implementations_and_modes():
  pytest.importorskip('DISTS_pytorch', reason='the reference it is timed beside')
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.benchmark_dists', '--size=32', '--batch=2',
       '--repeats=1'], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = [json.loads(l) for l in result.stdout.splitlines() if l.startswith('{')]
  assert [(l['implementation'], l['mode']) for l in lines] == [
      ('DISTS_pytorch (torch)', 'distance'), ('DISTS_pytorch (torch)', 'gradient'),
      ('vgg_jax', 'distance'), ('vgg_jax', 'gradient')]
  for line in lines:
    assert line['size'] == 32 and line['pairs_per_s'] > 0
    assert line['pairs_per_s'] == pytest.approx(2 / line['seconds_per_call'], rel=0.01)
