"""pretrained.load / fetch by name: download from 127.0.0.1, verify, convert once, cache."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import http_server  # tests/ is on sys.path
import run_helpers
from vgg_jax import checkpointing
from vgg_jax.data import imagenet_classes
from vgg_jax import pretrained
from vgg_jax.pretrained import download
from vgg_jax.pretrained import named_weights

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = 'vgg11_test'


def write_torchvision_vgg11(directory, fc_width=16, num_classes=10, seed=0):
  """A random torchvision-layout VGG-11 (narrow head) as vgg11_test-<sha256[:8]>.safetensors."""
  safetensors_numpy = pytest.importorskip('safetensors.numpy', reason='writes .safetensors')
  rng = np.random.default_rng(seed)
  state, channels, index = {}, 3, 0
  for out in (64, 'M', 128, 'M', 256, 256, 'M', 512, 512, 'M', 512, 512, 'M'):
    if out == 'M':
      index += 1
      continue
    state[f'features.{index}.weight'] = rng.normal(
        0, np.sqrt(2 / (9 * channels)), (out, channels, 3, 3)).astype(np.float32)
    state[f'features.{index}.bias'] = rng.normal(0, 0.01, out).astype(np.float32)
    channels, index = out, index + 2
  for j, (fan_in, out) in zip((0, 3, 6), ((512 * 49, fc_width), (fc_width, fc_width),
                                          (fc_width, num_classes))):
    state[f'classifier.{j}.weight'] = rng.normal(0, np.sqrt(2 / fan_in),
                                                 (out, fan_in)).astype(np.float32)
    state[f'classifier.{j}.bias'] = rng.normal(0, 0.01, out).astype(np.float32)
  staging = os.path.join(directory, 'staging.safetensors')
  safetensors_numpy.save_file(state, staging)
  sha256 = download.digest(staging, 'sha256')
  path = os.path.join(directory, f'{NAME}-{sha256[:8]}.safetensors')
  os.rename(staging, path)
  return path, sha256


def entry_for(path, sha256) -> named_weights.Weights:
  return named_weights.Weights(
      NAME, 'torchvision', f'https://example.invalid/{os.path.basename(path)}', 'sha256',
      sha256[:8], 'A', False, True, 0, None, None, named_weights.TORCH_IMAGENET, 'test', 0.0,
      os.path.getsize(path))


@pytest.fixture(name='served', scope='module')
def served_fixture(tmp_path_factory):
  """(entry, file path, server behaviour): a test file behind a server on 127.0.0.1."""
  root = str(tmp_path_factory.mktemp('server'))
  path, sha256 = write_torchvision_vgg11(root)
  with http_server.serve(root) as (url, behaviour):
    behaviour.url = url
    yield entry_for(path, sha256), path, behaviour


@pytest.fixture(name='env')
def env_fixture(served, tmp_path, monkeypatch):
  """A fresh cache, the mirror at the test server, the test entry in the table."""
  entry, _, behaviour = served
  monkeypatch.setenv(named_weights.CACHE_ENV, str(tmp_path / 'cache'))
  monkeypatch.setenv(named_weights.MIRROR_ENV, behaviour.url)
  monkeypatch.setitem(named_weights.WEIGHTS, NAME, entry)
  behaviour.requests.clear()
  return tmp_path / 'cache'


def test_a_name_downloads_and_converts_once_then_loads_from_the_cache(served, env, monkeypatch,
                                                                      capsys):
  entry, path, behaviour = served
  model, variables, mean_rgb = pretrained.load(NAME)
  assert len(behaviour.requests) == 1 and 'MB/s' in capsys.readouterr().err
  assert os.listdir(env / 'downloads') == []  # The converted checkpoint is what is kept.
  assert model.variant == 'A' and model.num_classes == 10 and model.fc_width == 16
  np.testing.assert_allclose(mean_rgb, [255 * m for m in pretrained.TORCH_MEAN], rtol=1e-6)
  # The same as reading the file directly (layout, variant and head detected).
  file_model, file_variables, file_mean = pretrained.load(path)
  assert file_model == model
  jax.tree_util.tree_map(np.testing.assert_array_equal, file_variables, variables)
  np.testing.assert_array_equal(file_mean, mean_rgb)
  assert checkpointing.load_meta(str(env / NAME))['imported_from'] == entry.url
  assert NAME in pretrained.cached_names()
  # Later loads read the cache: no request, even with the network gone.
  closed = run_helpers.free_port()  # Nobody listens on it.
  monkeypatch.setenv(named_weights.MIRROR_ENV, f'http://127.0.0.1:{closed}')
  _, again, _ = pretrained.load(NAME)
  jax.tree_util.tree_map(np.testing.assert_array_equal, again, variables)
  assert len(behaviour.requests) == 1


def test_wrong_bytes_leave_the_cache_clean(served, env, monkeypatch):
  entry, path, _ = served
  monkeypatch.setitem(named_weights.WEIGHTS, NAME,
                      entry.__class__(**{**entry.__dict__, 'hash': '00000000'}))
  with pytest.raises(download.DownloadError) as error:
    pretrained.load(NAME)
  assert os.path.basename(path) in str(error.value)
  assert download.digest(path, 'sha256') in str(error.value) and '00000000' in str(error.value)
  assert sorted(os.listdir(env)) == [f'.{NAME}.lock', 'downloads']
  assert os.listdir(env / 'downloads') == []


def test_the_cache_cleans_up_records_its_format_and_pins_the_sha256(served, env):
  entry, path, behaviour = served
  os.makedirs(env / f'.import-{NAME}-killed')  # Left by a conversion that was killed.
  pretrained.load(NAME)
  assert not [p for p in os.listdir(env) if p.startswith('.import-')]
  record_path = env / NAME / 'source.json'
  record = json.loads(record_path.read_text())
  assert record == {'format': pretrained.CONVERSION_FORMAT, 'file': os.path.basename(path),
                    'url': entry.url, 'sha256': download.digest(path, 'sha256')}
  # A conversion of another format is made again, from a download with the pinned sha256.
  record_path.write_text(json.dumps({**record, 'format': 0}))
  pretrained.load(NAME)
  assert len(behaviour.requests) == 2 and json.loads(record_path.read_text()) == record
  # The publisher checks 8 hex digits only: a file with that prefix but other bytes than
  # the first verified download (pinned here) is refused, and the pin is kept.
  record_path.write_text(json.dumps({**record, 'format': 0, 'sha256': '0' * 64}))
  with pytest.raises(download.DownloadError, match='the verified download of this entry had 0000'):
    pretrained.load(NAME)
  assert json.loads(record_path.read_text())['sha256'] == '0' * 64
  assert os.listdir(env / 'downloads') == []


def test_unknown_names_and_missing_paths_list_the_known_names(env):
  with pytest.raises(ValueError, match='known names: vgg11, vgg11_bn'):
    pretrained.load('vgg17')
  assert not os.path.exists(env)


def child_script(entry, distributed: bool) -> str:
  """A process that puts the test entry in the table, loads it, prints a checksum."""
  # Process 1 converts (process 0 comes to the lock later): not the primary host.
  start = ('jax.config.update("jax_cpu_collectives_implementation", "gloo")\n'
           'jax.distributed.initialize(f"127.0.0.1:{sys.argv[1]}", 2, int(sys.argv[2]))\n'
           'import time; jax.process_index() or time.sleep(2)\n'
           if distributed else '')
  return (
      'import sys\n'
      'import numpy as np, jax\n'
      + start +
      'from vgg_jax import pretrained\n'
      'from vgg_jax.pretrained import named_weights\n'
      f'named_weights.WEIGHTS[{NAME!r}] = named_weights.Weights(\n'
      f'    {entry.name!r}, {entry.layout!r}, {entry.url!r}, {entry.hash_kind!r}, {entry.hash!r},\n'
      '    "A", False, True, 0, None, None, named_weights.TORCH_IMAGENET, "test", 0.0,\n'
      f'    {entry.size_bytes})\n'
      f'model, variables, mean = pretrained.load({NAME!r})\n'
      'print(sum(float(np.abs(v).sum()) for v in jax.tree_util.tree_leaves(variables)))\n')


@pytest.mark.parametrize('distributed', [
    False, pytest.param(True, marks=pytest.mark.slow, id='gloo')], ids=['plain', 'gloo'])
def test_two_processes_loading_one_name_download_and_convert_it_once(served, env, distributed):
  """One takes the lock, downloads and converts; the other waits, then reads its checkpoint.

  'gloo': the two are one jax.distributed run, as launch.py --distributed starts them.
  """
  entry, _, behaviour = served
  behaviour.hang_seconds = 1.0  # The first holds the lock a while: the second must wait.
  port = str(run_helpers.free_port())
  env_vars = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu')
  procs = [subprocess.Popen([sys.executable, '-c', child_script(entry, distributed), port,
                             str(i)], env=env_vars, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for i in range(2)]
  try:
    outputs = [p.communicate(timeout=240)[0] for p in procs]
  finally:
    behaviour.hang_seconds = 0.0
    for p in procs:
      p.kill()
  for p, output in zip(procs, outputs):
    assert p.returncode == 0, run_helpers.failure_text(output)
  sums = [output.strip().splitlines()[-1] for output in outputs]
  assert sums[0] == sums[1] and float(sums[0]) > 0
  assert len(behaviour.requests) == 1
  assert sum('Converting' in output for output in outputs) == 1
  assert sum('Waiting for another process' in output for output in outputs) == 1
  if distributed:
    assert 'Converting' in outputs[1]


@pytest.mark.slow
def test_finetune_from_a_name_in_one_config(served, env, tmp_path):
  """finetune.py with init_from=NAME: fetched, frozen conv base, the weights' own mean."""
  from experiments.configs import finetune  # pylint: disable=g-import-not-at-top
  from pretrained_test import write_two_class_folder  # pylint: disable=g-import-not-at-top
  from vgg_jax.training import train  # pylint: disable=g-import-not-at-top
  write_two_class_folder(tmp_path / 'folder')
  config = finetune.get_config('small,A')
  config.model.update(image_size=32, head_width=16)
  config.data.update(folder=str(tmp_path / 'folder'), scale_min=32, scale_max=36,
                     eval_scale=32, device_window=0)
  config.init_from = NAME
  config.update(global_batch_size=16, eval_batch_size=16, num_train_steps=4,
                log_every_steps=2, eval_every_steps=4, checkpoint_every_steps=4)
  train.train_and_evaluate(config, str(tmp_path / 'run'))
  after, meta = run_helpers.params_and_meta(tmp_path / 'run')
  before, _ = run_helpers.params_and_meta(env / NAME)
  for layer in before:
    if layer.startswith('conv'):
      run_helpers.assert_trees_equal(after[layer], before[layer])
  assert meta['class_names'] == ['a', 'b'] and after['head2']['kernel'].shape == (16, 2)
  assert meta['config']['data']['mean_rgb'] == pytest.approx(
      [255 * m for m in pretrained.TORCH_MEAN])
  assert meta['config']['init_from'] == str(env / NAME)


@pytest.mark.slow
def test_predict_on_imagenet_weights_prints_class_names(tmp_path):
  """launch.py --mode=predict on a 1000-class import prints 'name (wnid)' lines; --explain
  draws the top class's Grad-CAM over the view."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  path, _ = write_torchvision_vgg11(str(tmp_path), num_classes=1000)
  pretrained.import_weights('torchvision', path, 'A', str(tmp_path / 'imported'))
  image = tmp_path / 'photo.png'
  Image.fromarray(np.random.default_rng(1).integers(0, 256, (240, 300, 3), np.uint8)).save(image)
  result = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'launch.py'), '--mode=predict',
       f'--workdir={tmp_path / "imported"}', str(image), '--explain=gradcam',
       f'--explain_dir={tmp_path / "why"}'],
      capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert result.returncode == 0, run_helpers.failure_text(result.stdout + result.stderr)
  lines = result.stdout.strip().splitlines()
  assert lines[0] == str(image) and len(lines) == 7
  overlay = tmp_path / 'why' / 'photo_gradcam.png'
  assert lines[-1].startswith(f'Wrote {overlay} (gradcam of ') and overlay.exists()
  assert lines[-1].endswith(lines[1].split('%', 1)[1].strip() + ')')  # The top class's.
  lines = lines[:-1]
  names = dict(imagenet_classes.classes())
  for line in lines[1:]:
    label = line.split('%', 1)[1].strip()
    wnid = label.rsplit('(', 1)[1].rstrip(')')
    assert label == f'{names[wnid]} ({wnid})'


def test_list_and_urls_commands(tmp_path):
  """python -m vgg_jax.pretrained --list marks what is cached and how each file is checked;
  --urls fills a mirror."""
  for name, record in (('vgg19_bn', {'format': pretrained.CONVERSION_FORMAT, 'sha256': 'f' * 64}),
                       ('vgg13', {'format': pretrained.CONVERSION_FORMAT - 1})):
    os.makedirs(tmp_path / name / checkpointing.CHECKPOINT_SUBDIR)
    (tmp_path / name / 'source.json').write_text(json.dumps(record))
  os.makedirs(tmp_path / 'vgg11' / checkpointing.CHECKPOINT_SUBDIR)  # Before records: none.
  env_vars = dict(os.environ, JAX_PLATFORMS='cpu', **{named_weights.CACHE_ENV: str(tmp_path)})
  run = lambda flag: subprocess.run(  # pylint: disable=unnecessary-lambda-assignment
      [sys.executable, '-m', 'vgg_jax.pretrained', flag], capture_output=True, text=True,
      env=env_vars, cwd=ROOT, timeout=120)
  listing, urls = run('--list'), run('--urls')
  assert listing.returncode == 0 and urls.returncode == 0, listing.stderr + urls.stderr
  rows = {line.split()[0]: line.split() for line in listing.stdout.splitlines()[2:]}
  assert set(rows) == set(named_weights.WEIGHTS)
  assert rows['vgg19_bn'][5] == 'yes' and rows['vgg19'][5] == 'no'
  # A conversion of another format, or one from before formats were recorded, is made again.
  assert rows['vgg13'][5] == 'no' and rows['vgg11'][5] == 'no'
  assert rows['vgg19_bn'][6:8] == ['prefix,', 'pinned'] and rows['vgg13'][6] == 'prefix'
  assert rows['vgg19'][6] == 'sha256' and rows['vgg16_keras'][6] == 'md5'
  assert urls.stdout.split() == [w.url for w in named_weights.WEIGHTS.values()]
