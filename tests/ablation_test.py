"""The ablation's --quick flow: three files, six configurations, finished runs skipped."""

import csv
import functools
import json
import os
import subprocess
import sys

import pytest

import data_helpers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_ablation(workdir):
  # One CPU device as a user has; LLVM's optimisation off: the quick flow is compile-bound.
  env = dict(os.environ, XLA_FLAGS=data_helpers.FAST_COMPILE_FLAGS)
  return subprocess.run([sys.executable, '-m', 'experiments.ablation', '--preset=digits',
                         '--quick', f'--workdir={workdir}', '--variants=A,A-LRN,E',
                         '--noreuse_host_memory'],  # Compile-bound: faster without it.
                        cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=900)


def assert_png(path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(path) as image:
    assert image.format == 'PNG' and image.size[0] > 400 and image.size[1] > 300


@pytest.mark.slow
def test_quick_ablation_writes_all_tables_and_plots_then_skips(tmp_path):
  first = run_ablation(tmp_path)
  assert first.returncode == 0, first.stderr[-3000:]
  rows = list(csv.DictReader(open(tmp_path / 'ablation.csv')))
  # A and A-LRN once; the deeper nets warm-started from A and from Glorot.
  assert [(r['variant'], r['init']) for r in rows] == [
      ('A', ''), ('A-LRN', ''), ('E', 'warm'), ('E', 'glorot')]
  assert [int(r['weight_layers']) for r in rows] == [11, 11, 19, 19]
  assert all(0.0 <= float(r['single_top1']) <= 1.0 for r in rows)
  assert all(int(r['eval_images']) == 450 for r in rows)
  config = json.load(open(tmp_path / 'E_warm_seed0' / 'config.json'))
  assert config['init_from'] == str(tmp_path / 'A_seed0')
  assert json.load(open(tmp_path / 'E_glorot_seed0' / 'config.json'))['init_from'] == ''
  markdown = open(tmp_path / 'ablation.md').read()
  for title in ('Table 3 shape', 'Table 4 shape', 'Table 5 shape', 'Table 6 shape'):
    assert title in markdown
  assert 'warm start from A (Sec. 3.1), 4 steps' in markdown and 'Glorot' in markdown
  for variant in ('| A |', '| A-LRN |'):
    assert markdown.count(variant) == 2
  assert markdown.count('| E |') == 3  # Tables 3, 4 and 5.
  assert '| best two |' in markdown and '| all runs | 4 runs | dense |' in markdown
  assert '--preset=digits --quick --variants=A,A-LRN,E' in markdown
  for title in ('Table 5 shape', 'Table 6 shape'):  # --quick: a subset of the test split.
    assert 'the first 64 test images' in markdown.split(f'## {title}')[1].splitlines()[0]
  assert os.path.exists(tmp_path / 'E_warm_seed0' / 'eval_multicrop_32_36_noflip_first64.json')
  for name in ('ablation.png', 'ablation_curves.png'):
    assert_png(tmp_path / name)
  steps_before = sorted(os.listdir(tmp_path / 'E_warm_seed0' / 'checkpoints'))

  second = run_ablation(tmp_path)
  assert second.returncode == 0, second.stderr[-3000:]
  assert second.stderr.count('is finished: skipped') == 4
  assert 'Compiled the train step' not in second.stderr
  assert sorted(os.listdir(tmp_path / 'E_warm_seed0' / 'checkpoints')) == steps_before
  assert open(tmp_path / 'ablation.md').read().split('## Table 3')[1] == (
      markdown.split('## Table 3')[1])  # The cached evaluations give the same tables.


def run_in_process(argv, monkeypatch):
  """ablation.main with these flags, in this process (so tfds.testing.mock_data applies).

  Checkpoints are saved synchronously here: while the mock's as_dataset runs, TFDS
  redirects every epath/gfile call of the process to a temporary mock file system, and
  an asynchronous Orbax save writing from its own thread at that moment would write
  there (seen in CI). Real TFDS does not do this.
  """
  from absl import flags  # pylint: disable=g-import-not-at-top
  from experiments import ablation  # pylint: disable=g-import-not-at-top
  from vgg_jax import checkpointing  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(checkpointing, 'create_manager', functools.partial(
      checkpointing.create_manager, async_save=False))
  flags.FLAGS.unparse_flags()
  flags.FLAGS(['ablation', '--noreuse_host_memory'] + argv)
  try:
    ablation.main([])
  finally:
    flags.FLAGS.unparse_flags()


def quick_on_mock_data(tmp_path, monkeypatch, dataset: str, eval_split: str):
  """The --quick preset named like `dataset` on 40-example mock splits; its CSV rows."""
  data_dir = tmp_path / 'tfds'
  preset = 'imagenet' if dataset == 'imagenet2012' else dataset
  with data_helpers.mock_tfds(dataset, data_dir, {'train': 40, eval_split: 40}, 40):
    run_in_process([f'--preset={preset}', '--quick', f'--workdir={tmp_path / "out"}',
                    f'--data_dir={data_dir}', '--variants=A,D'], monkeypatch)
  return list(csv.DictReader(open(tmp_path / 'out' / 'ablation.csv')))


@pytest.mark.slow
def test_cifar10_quick_on_mock_data(tmp_path, monkeypatch):
  rows = quick_on_mock_data(tmp_path, monkeypatch, 'cifar10', 'test')
  assert [(r['variant'], r['init']) for r in rows] == [('A', ''), ('D', 'warm'),
                                                       ('D', 'glorot')]
  assert all(int(r['eval_images']) == 16 for r in rows)  # --quick: 16 test images.
  markdown = open(tmp_path / 'out' / 'ablation.md').read()
  assert 'Table 5 shape' in markdown and 'Table 6 shape' in markdown
  assert_png(tmp_path / 'out' / 'ablation_curves.png')


@pytest.mark.slow
def test_imagenet_quick_on_mock_data_runs_every_column(tmp_path, monkeypatch):
  rows = quick_on_mock_data(tmp_path, monkeypatch, 'imagenet2012', 'validation')
  assert [(r['variant'], r['train_scale']) for r in rows] == [
      ('A', '256'), ('D', '256'), ('D', '384'), ('D', '256-512')]
  assert all(int(r['eval_images']) == 4 for r in rows)  # --quick: 4 test images.
  config = json.load(open(tmp_path / 'out' / 'D_S256-512_warm_seed0' / 'config.json'))
  assert config['init_from'] == str(tmp_path / 'out' / 'D_S384_warm_seed0')
  assert (config['data']['scale_min'], config['data']['scale_max']) == (32, 64)
  markdown = open(tmp_path / 'out' / 'ablation.md').read()
  # The paper's figures beside ours in every table.
  for figure in ('29.6 / 10.4', '26.6 / 8.6', '25.6 / 8.1', '24.4 / 7.2', '23.7 / 6.8'):
    assert figure in markdown
  assert_png(tmp_path / 'out' / 'ablation.png')


def test_imagenet_preset_plans_the_papers_training_scales(tmp_path):
  from absl import flags  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, ROOT)
  from experiments import ablation  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS(['ablation_test', f'--workdir={tmp_path}'])
  preset = ablation.get_preset('imagenet', quick=False)
  runs = ablation.plan_runs(preset, str(tmp_path), seed=0)
  by_name = {os.path.basename(run.workdir): (run.variant, run.scale, run.config,
                                                 run.single_q, run.multi_q) for run in runs}
  assert len(runs) == 6 + 3 + 3
  # S=256: A from N(0, 0.01^2); the deeper nets warm-start from A (Sec. 3.1).
  assert by_name['A_seed0'][2].model.kernel_init == 'paper'
  assert by_name['D_warm_seed0'][2].init_from == str(tmp_path / 'A_seed0')
  assert by_name['D_warm_seed0'][3:] == ((256,), (224, 256, 288))
  # S=384 from the S=256 net at lr 1e-3; S in [256, 512] from the S=384 net (Tables 3, 4).
  s384 = by_name['E_S384_warm_seed0'][2]
  assert s384.init_from == str(tmp_path / 'E_warm_seed0') and s384.optimizer.learning_rate == 1e-3
  assert (s384.data.scale_min, s384.data.scale_max, s384.data.eval_scale) == (384, 384, 384)
  jitter = by_name['C_S256-512_warm_seed0']
  assert jitter[2].init_from == str(tmp_path / 'C_S384_warm_seed0')
  assert (jitter[2].data.scale_min, jitter[2].data.scale_max) == (256, 512)
  assert jitter[3:] == ((384,), (256, 384, 512))
  assert set(jitter[2].init_layers) == set(ablation.models.layer_names('C'))
  # Runs come in training order: every init_from is planned before its user.
  order = [run.workdir for run in runs]
  for run in runs:
    if run.config.init_from:
      assert order.index(run.config.init_from) < order.index(run.workdir)


def test_digits_preset_plans_both_initialisations_and_budgets(tmp_path):
  from absl import flags  # pylint: disable=g-import-not-at-top
  from experiments import ablation  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS(['ablation_test', f'--workdir={tmp_path}'])
  preset = ablation.get_preset('digits', quick=False)
  preset.budgets = (1.0, 2.0)  # What --budgets=1,2 sets.
  runs = ablation.plan_runs(preset, str(tmp_path), seed=1)
  names = [os.path.basename(run.workdir) for run in runs]
  assert names[:2] == ['A_seed1', 'A-LRN_seed1'] and len(runs) == 2 + 4 * 2 * 2
  assert {run.init for run in runs[2:]} == {'warm', 'glorot'}
  by_name = {os.path.basename(run.workdir): run for run in runs}
  warm, glorot = by_name['E_warm_seed1'].config, by_name['E_glorot_x2_seed1'].config
  assert warm.init_from == str(tmp_path / 'A_seed1') and glorot.init_from == ''
  # Sec. 3.1's seven layers: A's first four convs and its three FC layers.
  assert tuple(warm.init_layers) == ('conv1_1', 'conv2_1', 'conv3_1', 'conv3_2', 'fc6', 'fc7',
                                     'fc8')
  assert (warm.num_epochs, glorot.num_epochs) == (15.0, 30.0)  # A's budget, and 2x.
  assert by_name['A_seed1'].config.num_epochs == 15.0 and warm.seed == 1
