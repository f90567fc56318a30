"""Tests for vgg_jax.evaluation.protocols: the Sec. 3.2 protocols, fusion, bad input, report, explain."""

import csv
import json
import os
import subprocess
import sys

import jax
import ml_collections
import numpy as np
from PIL import Image
import pytest

from experiments.configs import base
import run_helpers
from vgg_jax import checkpointing
from vgg_jax.data import statistics
from vgg_jax.evaluation import explain
from vgg_jax.evaluation import protocols
from vgg_jax.evaluation import views
from vgg_jax import models
from vgg_jax import pretrained
from vgg_jax.training import train


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def eval_config(**overrides):
  """base.eval_config() at Q=32, then overrides."""
  config = base.eval_config()
  config.scales = (32,)
  config.update(overrides)
  return config


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('run')
  config = run_helpers.tiny_config(num_train_steps=16, eval_every_steps=8)
  result = train.train_and_evaluate(config, str(workdir))
  return workdir, result


def test_single_scale_matches_the_training_eval(run_dir):
  workdir, result = run_dir
  out = protocols.run(eval_config(checkpoint='latest'), [str(workdir)], str(workdir))
  assert out['num_images'] == 450 and out['views_per_image'] == 1
  assert out['top1_error'] == pytest.approx(result['eval/top1_error'], abs=1e-6)
  assert out['top5_error'] == pytest.approx(result['eval/top5_error'], abs=1e-6)
  assert json.load(open(workdir / 'eval_single.json'))['top1_error'] == out['top1_error']


def test_multiscale_views_and_fusion_of_identical_checkpoints(run_dir):
  workdir, _ = run_dir
  config = eval_config(protocol='dense+multicrop', scales=(32, 40), max_examples=16)
  one = protocols.run(config, [str(workdir)])
  assert one['views_per_image'] == 52 * 2 and one['num_images'] == 16
  two = protocols.run(config, [str(workdir), str(workdir)])
  assert two['views_per_image'] == 52 * 2 * 2
  assert (two['top1_error'], two['top5_error']) == (one['top1_error'], one['top5_error'])


def test_best_checkpoint_is_the_lowest_eval_error(run_dir):
  workdir, _ = run_dir
  rows = [json.loads(l) for l in open(workdir / 'metrics.jsonl')]
  errors = {r['step']: r['eval/top1_error'] for r in rows if 'eval/top1_error' in r}
  best = min(errors, key=lambda step: (errors[step], -step))  # Later step on ties.
  assert checkpointing.resolve_step(str(workdir), 'best') == best
  assert checkpointing.resolve_step(str(workdir), 'latest') == 16
  with pytest.raises(ValueError, match='No checkpoint at step 7'):
    checkpointing.resolve_step(str(workdir), '7')


def test_bad_input(run_dir, tmp_path):
  workdir, _ = run_dir
  with pytest.raises(ValueError, match="Unknown evaluation protocol 'tencrop'"):
    protocols.run(eval_config(protocol='tencrop'), [str(workdir)])
  with pytest.raises(ValueError, match='Q=28 is smaller than the crop size 32'):
    protocols.run(eval_config(scales=(32, 28)), [str(workdir)])
  with pytest.raises(FileNotFoundError, match='No checkpoints in'):
    protocols.run(eval_config(), [str(tmp_path)])
  other = str(tmp_path / 'other')  # A 12-class checkpoint, saved without training.
  config = run_helpers.tiny_config(**{'model.num_classes': 12})
  model = models.create_model(config.model)
  state = {'step': np.zeros((), np.int32),
           'params': models.init_variables(model, jax.random.key(0))['params']}
  meta = checkpointing.make_meta(config.to_dict(), 0, global_batch_size=16, num_classes=12,
                                 class_names=[str(i) for i in range(12)])
  with checkpointing.create_manager(other, async_save=False) as manager:
    checkpointing.save(manager, 0, state, meta)
  with pytest.raises(ValueError, match='different class counts'):
    protocols.run(eval_config(), [str(workdir), str(other)])


@pytest.mark.slow
def test_launch_evaluate_prints_a_table_and_writes_json(run_dir):
  workdir, _ = run_dir
  result = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'launch.py'), '--mode=evaluate',
       f'--workdir={workdir}', '--config.eval.protocol=dense', '--config.eval.scales=(32,40)',
       '--config.eval.flip=True',
       '--config.eval.max_examples=30'], capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert '| A | dense | 32,40 | 4 | 30 |' in result.stdout
  saved = json.load(open(workdir / 'eval_dense.json'))
  assert saved['num_images'] == 30 and saved['scales'] == [32, 40]


def test_table_shows_top5_only_for_more_than_five_classes():
  def result(variant, classes, top5=0.125):
    return {'variants': [variant], 'protocol': 'dense', 'scales': [32], 'views_per_image': 1,
            'num_images': 8, 'top1_error': 0.25, 'top5_error': top5, 'num_classes': classes}
  ten = protocols.format_table([result('D', 10)]).splitlines()
  assert ten[0].endswith('| top-1 err % | top-5 err % |') and ten[2].endswith('| 25.00 | 12.50 |')
  two = protocols.format_table([result('D', 2, top5=0.0)]).splitlines()
  assert 'top-5' not in two[0] and two[1] == '|---|---|---|---|---|---|'
  assert two[2] == '| D | dense | 32 | 1 | 8 | 25.00 |'
  mixed = protocols.format_table([result('D', 2), result('E', 10)]).splitlines()
  assert mixed[2].endswith('| 25.00 | - |') and mixed[3].endswith('| 25.00 | 12.50 |')
  stored = result('D', 10)
  del stored['num_classes']  # A result stored before the field existed: top-5 shown.
  assert protocols.format_table([stored]).splitlines()[2].endswith('| 12.50 |')


@pytest.mark.slow
def test_launch_evaluate_uses_the_runs_stored_config(tmp_path, folder):
  # A folder run with test-time flips, evaluated without --config: the digits default
  # (flips off) must not replace the run's own eval settings; explicit flags still win.
  workdir = tmp_path / 'run'
  config = run_helpers.tiny_config(num_train_steps=2, **{
      'data.source': 'folder', 'data.folder': folder, 'data.eval_split': 'validation',
      'model.num_classes': 0, 'eval.flip': True, 'eval_batch_size': 8})
  train.train_and_evaluate(config, str(workdir))
  def launch(*flags):
    return subprocess.run([sys.executable, os.path.join(ROOT, 'launch.py'), '--mode=evaluate',
                           f'--workdir={workdir}', '--config.eval.protocol=dense', *flags],
                          capture_output=True, text=True, timeout=300)
  result = launch()
  assert result.returncode == 0, result.stderr[-3000:]
  for warning in ('read_only=True', 'Given directory is read only', 'Metadata file does not'):
    assert warning not in result.stderr  # Orbax's warnings about intended read-only use.
  stored = json.load(open(workdir / 'eval_dense.json'))
  assert stored['views_per_image'] == 2 and stored['num_images'] == 10  # Flips on; folder.
  assert stored['num_classes'] == 2 and 'top-5' not in result.stdout  # Cats and dogs.
  result = launch('--config.eval.flip=False')
  assert result.returncode == 0, result.stderr[-3000:]
  assert json.load(open(workdir / 'eval_dense.json'))['views_per_image'] == 1


def test_batch_norm_run_evaluates_and_predicts_with_its_running_statistics(tmp_path):
  config = run_helpers.tiny_config(**{'model.batch_norm': True, 'num_train_steps': 8})
  result = train.train_and_evaluate(config, str(tmp_path))
  out = protocols.run(eval_config(checkpoint='latest'), [str(tmp_path)])
  assert out['top1_error'] == pytest.approx(result['eval/top1_error'], abs=1e-6)
  model, variables, _, _ = pretrained.load_checkpoint(str(tmp_path), 'latest')
  assert model.batch_norm and set(variables) == {'params', 'batch_stats'}
  # The predictor uses the running statistics: the same as model.apply in eval mode, and
  # unlike the statistics of the batch itself.
  x = np.random.default_rng(0).normal(0, 40, (4, 32, 32, 3)).astype(np.float32)
  probs = views.Predictor(model, variables, batch_size=8)(x)
  expected = jax.nn.softmax(run_helpers.apply(model, variables, x))
  np.testing.assert_allclose(probs, expected, rtol=1e-4, atol=1e-6)
  batch_mode, _ = jax.jit(lambda v: model.apply(v, x, train=True, mutable=['batch_stats'],
                                                rngs={'dropout': jax.random.key(0)}))(variables)
  assert not np.allclose(probs, jax.nn.softmax(batch_mode), atol=1e-3)


def test_predict_compiles_once_per_bucket_not_per_photo(run_dir, tmp_path):
  workdir, _ = run_dir
  rng = np.random.default_rng(5)
  paths = []
  for i in range(10):  # 32 high, 32..59 wide: 10 shapes, 2 buckets (32x32, 32x64).
    path = tmp_path / f'photo{i}.png'
    Image.fromarray(rng.integers(0, 256, (32, 32 + 3 * i, 3), dtype=np.uint8)).save(path)
    paths.append(str(path))
  compiled = views._posteriors._cache_size  # pylint: disable=protected-access
  before = compiled()
  results = protocols.predict(eval_config(protocol='dense'), str(workdir), paths)
  assert compiled() - before <= 2  # One batch size each here.
  assert [path for path, _ in results] == paths
  assert all(len(top) == 5 and top[0][1] >= top[-1][1] for _, top in results)


def test_report_counts_equal_the_predictions_by_hand(run_dir):
  """evaluate's report beside the JSON; training's own from its last evaluation."""
  workdir, result = run_dir
  out = protocols.run(eval_config(checkpoint='latest', max_examples=100), [str(workdir)],
                     str(workdir))
  assert [os.path.basename(p) for p in out['report']] == [
      'eval_single_classes.md', 'eval_single_classes.csv', 'eval_single_confusion.png',
      'eval_single_errors.png']
  model, variables, _, _ = pretrained.load_checkpoint(str(workdir), 'latest')
  predictor = views.Predictor(model, variables, batch_size=64)
  data = ml_collections.ConfigDict(checkpointing.load_meta(str(workdir))['config']['data'])
  mean = statistics.rgb_statistics(data, str(workdir))['mean_rgb']
  labels, images = zip(*protocols.rescaled_images(data, data.eval_split, [32], mean, 100))
  predicted = predictor(np.stack([i[0] for i in images])).argmax(axis=1)
  rows = list(csv.DictReader(open(workdir / 'eval_single_classes.csv')))
  for c, row in enumerate(rows):
    mine = np.asarray(labels) == c
    assert int(row['support']) == mine.sum()
    if mine.sum():
      assert float(row['top1_error']) == pytest.approx(np.mean(predicted[mine] != c), abs=1e-6)
  # The training run wrote its report after its last evaluation: all 450 test images.
  final = list(csv.DictReader(open(workdir / 'eval_final_classes.csv')))
  wrong = sum(float(r['top1_error']) * int(r['support']) for r in final)
  assert sum(int(r['support']) for r in final) == 450
  assert wrong / 450 == pytest.approx(result['eval/top1_error'], abs=1e-6)
  assert (workdir / 'eval_final_confusion.png').exists()


@pytest.mark.slow  # Grad-CAM and SmoothGrad compile per image shape.
def test_explain_files_overlay_the_predicted_class(run_dir, tmp_path):
  workdir, _ = run_dir
  rng = np.random.default_rng(8)
  paths = []
  for i, shape in enumerate([(32, 32), (40, 56)]):
    paths.append(str(tmp_path / f'photo{i}.png'))
    Image.fromarray(rng.integers(0, 256, shape + (3,), dtype=np.uint8)).save(paths[-1])
  config = eval_config(protocol='dense')
  predicted = [top[0] for _, top in protocols.predict(config, str(workdir), paths)]
  for method in explain.METHODS:
    setup = protocols.load_for_predict(config, str(workdir))
    explanation = explain.Explanation(method, samples=2 if method == 'saliency' else 0)
    rows = protocols.explain_files(setup, paths, explanation, str(tmp_path / 'out'))
    assert [r[0] for r in rows] == paths
    assert [os.path.basename(r[1]) for r in rows] == [f'photo0_{method}.png',
                                                      f'photo1_{method}.png']
    for (_, out, name, p), (top_name, top_p) in zip(rows, predicted):
      assert name == top_name and p == pytest.approx(top_p, abs=0.05)  # predict adds a flip.
      with Image.open(out) as picture:
        assert picture.size[0] > picture.size[1] > 100
  with pytest.raises(ValueError, match="--explain='lime' is not one of"):
    explain.Explanation('lime')
