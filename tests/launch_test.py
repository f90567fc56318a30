"""The README's main command: the default config trains to >= 97% on digits."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_default_command_reaches_97_percent_on_digits(tmp_path):
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}  # As a user runs it.
  result = subprocess.run([sys.executable, os.path.join(ROOT, 'launch.py'),
                           f'--workdir={tmp_path}'], env=env, capture_output=True,
                          text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl')]
  final = [r for r in rows if 'eval/top1_error' in r][-1]
  assert final['step'] == 630 and final['eval/num_examples'] == 450
  assert final['eval/top1_error'] <= 0.03, final
  assert 'step 630/630' in result.stderr and 'ETA' in result.stderr
  # What a person reads: one summary, and the result in percent as the README quotes it.
  assert result.stderr.count('Run summary:') == 1, result.stderr[-3000:]
  percent = f"{100 * final['eval/top1_error']:.2f}%"
  accuracy = f"{100 * (1 - final['eval/top1_error']):.2f}% accuracy"
  assert result.stdout.startswith('Finished at step 630 in ') and (
      f'top-1 error {percent} ({accuracy}), top-5 error' in result.stdout), result.stdout
