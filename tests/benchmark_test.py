"""The benchmark harness: JSON fields, torch comparison, no TensorFlow on its path."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_benchmark_path_imports_neither_tensorflow_nor_ml_collections():
  code = ('import sys, experiments.benchmark; '
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
