"""The ablation's --quick flow: three files, six configurations, finished runs skipped."""

import csv
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_ablation(workdir):
  # One CPU device as a user has; LLVM's optimisation off: the quick flow is compile-bound.
  env = dict(os.environ, XLA_FLAGS='--xla_backend_optimization_level=0')
  return subprocess.run([sys.executable, '-m', 'experiments.ablation', '--preset=digits',
                         '--quick', f'--workdir={workdir}',
                         '--noreuse_host_memory'],  # Compile-bound: faster without it.
                        cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_quick_ablation_writes_tables_and_plot_then_skips(tmp_path):
  first = run_ablation(tmp_path)
  assert first.returncode == 0, first.stderr[-3000:]
  rows = list(csv.DictReader(open(tmp_path / 'ablation.csv')))
  assert [r['variant'] for r in rows] == ['A', 'A-LRN', 'B', 'C', 'D', 'E']
  assert [int(r['weight_layers']) for r in rows] == [11, 11, 13, 16, 16, 19]
  assert all(0.0 <= float(r['single_top1']) <= 1.0 for r in rows)
  assert all(int(r['eval_images']) == 450 for r in rows)
  markdown = open(tmp_path / 'ablation.md').read()
  assert 'Table 3 shape' in markdown and 'Table 4 shape' in markdown
  for variant in ('| A |', '| A-LRN |', '| B |', '| C |', '| D |', '| E |'):
    assert markdown.count(variant) == 2
  assert open(tmp_path / 'ablation.png', 'rb').read(8) == b'\x89PNG\r\n\x1a\n'
  steps_before = sorted(os.listdir(tmp_path / 'E_seed0' / 'checkpoints'))

  second = run_ablation(tmp_path)
  assert second.returncode == 0, second.stderr[-3000:]
  assert second.stderr.count('is finished: skipped') == 6
  assert 'Compiled the train step' not in second.stderr
  assert sorted(os.listdir(tmp_path / 'E_seed0' / 'checkpoints')) == steps_before


def test_imagenet_preset_plans_the_papers_training_scales(tmp_path):
  from absl import flags  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, ROOT)
  from experiments import ablation  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS(['ablation_test', f'--workdir={tmp_path}'])
  preset = ablation.get_preset('imagenet', quick=False)
  runs = ablation.plan_runs(preset, str(tmp_path), seed=0)
  by_name = {os.path.basename(workdir): (variant, scale, config, single, multi)
             for variant, scale, workdir, config, single, multi in runs}
  assert len(runs) == 6 + 3 + 3
  # S=256: A from N(0, 0.01^2); the deeper nets warm-start from A (Sec. 3.1).
  assert by_name['A_seed0'][2].model.kernel_init == 'paper'
  assert by_name['D_seed0'][2].init_from == str(tmp_path / 'A_seed0')
  assert by_name['D_seed0'][3:] == ((256,), (224, 256, 288))
  # S=384 from the S=256 net at lr 1e-3; S in [256, 512] from the S=384 net (Tables 3, 4).
  s384 = by_name['E_S384_seed0'][2]
  assert s384.init_from == str(tmp_path / 'E_seed0') and s384.learning_rate == 1e-3
  assert (s384.data.scale_min, s384.data.scale_max, s384.data.eval_scale) == (384, 384, 384)
  jitter = by_name['C_S256-512_seed0']
  assert jitter[2].init_from == str(tmp_path / 'C_S384_seed0')
  assert (jitter[2].data.scale_min, jitter[2].data.scale_max) == (256, 512)
  assert jitter[3:] == ((384,), (256, 384, 512))
  assert set(jitter[2].init_layers) == set(ablation.models.layer_names('C'))
  # Runs come in training order: every init_from is planned before its user.
  order = [workdir for _, _, workdir, *_ in runs]
  for _, _, workdir, config, *_ in runs:
    if config.init_from:
      assert order.index(config.init_from) < order.index(workdir)
