"""Tests for vgg_jax.data.scan: image folders checked once, cached, bad files named."""

import logging
import os

import numpy as np
from PIL import Image
import pytest

import data_helpers
import run_helpers
from vgg_jax.data import scan
from vgg_jax.data import sources


def make_folder(root, per_class=4):
  """root/{train,validation}/{a,b}/ with good 40x40 JPEGs; returns root as str."""
  rng = np.random.default_rng(0)
  for split, count in (('train', per_class), ('validation', 2)):
    for name in ('a', 'b'):
      os.makedirs(root / split / name)
      for i in range(count):
        data_helpers.write_image(root / split / name / f'{i}.jpg', (40, 40), 'RGB', rng, 'JPEG')
  return str(root)


def add_bad_files(root):
  """One undecodable file of each kind in root/train; their paths, sorted."""
  good = (root / 'train' / 'a' / '0.jpg').read_bytes()
  bad = {'a/truncated.jpg': good[:len(good) // 3], 'a/text.jpg': b'not an image',
         'b/empty.jpg': b''}
  for rel, data in bad.items():
    (root / 'train' / rel).write_bytes(data)
  tiff = root / 'train' / 'b' / 'tiff.png'  # A format TensorFlow cannot read.
  Image.new('RGB', (8, 8)).save(tiff, 'TIFF')
  return sorted([str(root / 'train' / rel) for rel in bad] + [str(tiff)])


def test_bad_files_of_every_kind_in_one_error(tmp_path):
  root = make_folder(tmp_path / 'data')
  bad = add_bad_files(tmp_path / 'data')
  cache_dir = tmp_path / 'work'
  with pytest.raises(ValueError) as error:
    sources.load_source(data_helpers.data_config(source='folder', folder=root), 'train',
                        cache_dir=str(cache_dir))
  message = str(error.value)
  assert message.startswith('4 image file(s)')
  assert all(f'{path}: ' in message for path in bad)
  assert '--config.data.skip_corrupt=True' in message
  assert not cache_dir.exists()  # Nothing written.


def test_skip_corrupt_leaves_them_out_with_a_warning(tmp_path, caplog):
  root = make_folder(tmp_path / 'data')
  bad = add_bad_files(tmp_path / 'data')
  config = data_helpers.data_config(source='folder', folder=root, skip_corrupt=True)
  with caplog.at_level(logging.INFO):
    source = sources.load_source(config, 'train', cache_dir=str(tmp_path / 'work'))
  assert source.num_examples == source.total_examples == 8
  assert not {source.describe(i) for i in range(8)} & set(bad)
  warning, = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert all(path in warning for path in bad)
  assert f'Folder {root}/train: 2 classes, a 4, b 4 (4 unreadable files left out)' in (
      caplog.text)


def test_check_is_cached_and_redone_for_changed_files(tmp_path, monkeypatch):
  root = make_folder(tmp_path / 'data')
  config = data_helpers.data_config(source='folder', folder=root)
  work = str(tmp_path / 'work')
  first = sources.load_source(config, 'train', cache_dir=work)
  assert len(os.listdir(work)) == 1
  checked = []
  check_file = scan.check_file
  monkeypatch.setattr(scan, 'check_file', lambda p: checked.append(p) or check_file(p))
  again = sources.load_source(config, 'train', cache_dir=work)
  assert not checked  # Nothing decoded on the rerun.
  assert [again.describe(i) for i in range(8)] == [first.describe(i) for i in range(8)]
  changed = os.path.join(root, 'train', 'b', '1.jpg')
  os.utime(changed, ns=(0, 1_000_000_000))
  sources.load_source(config, 'train', cache_dir=work)
  assert checked == [changed]
  sources.load_source(config, 'train', cache_dir=work)
  assert checked == [changed]  # The cache was brought up to date.


def test_non_image_files_are_counted_not_errors(tmp_path, caplog):
  root = make_folder(tmp_path / 'data')
  (tmp_path / 'data' / 'train' / 'a' / 'notes.txt').write_text('not an image')
  (tmp_path / 'data' / 'train' / 'b' / 'labels.csv').write_text('a,b')
  with caplog.at_level(logging.INFO):
    source = sources.load_source(data_helpers.data_config(source='folder', folder=root), 'train')
  assert source.num_examples == 8
  assert f'Ignored 2 file(s) in {root}/train without an image extension' in caplog.text


def test_orientation_is_read_per_file(tmp_path):
  root = tmp_path / 'data'
  os.makedirs(root / 'train' / 'a')
  for v in (1, 6, 8):
    exif = Image.Exif()
    exif[0x0112] = v
    Image.new('RGB', (16, 8)).save(root / 'train' / 'a' / f'{v}.jpg', exif=exif)
  source = sources.load_source(data_helpers.data_config(source='folder', folder=str(root)), 'train')
  assert [int(ex['orientation']) for ex in source.make_dataset()] == [1, 6, 8]


def folder_run_config(root, **overrides):
  """The tiny net-A run on an image folder; classes counted from the folder."""
  return run_helpers.tiny_config(**{
      'data.source': 'folder', 'data.folder': root, 'model.num_classes': 0,
      'data.eval_split': 'validation', 'data.mean_rgb': (120., 110., 100.),
                                    **overrides})


def test_train_stops_on_bad_files_before_writing_anything(tmp_path):
  from vgg_jax.training import train  # pylint: disable=g-import-not-at-top  (only this test trains)
  root = make_folder(tmp_path / 'data')
  bad = add_bad_files(tmp_path / 'data')
  workdir = tmp_path / 'work'
  with pytest.raises(ValueError, match='skip_corrupt=True') as error:
    train.train_and_evaluate(folder_run_config(root), str(workdir))
  assert all(path in str(error.value) for path in bad)
  assert not workdir.exists()


def test_train_with_skip_corrupt_trains_on_the_rest(tmp_path, caplog):
  from vgg_jax.training import train  # pylint: disable=g-import-not-at-top  (only this test trains)
  root = make_folder(tmp_path / 'data')
  bad = add_bad_files(tmp_path / 'data')
  config = folder_run_config(root, **{
      'data.skip_corrupt': True, 'num_train_steps': 2, 'eval_every_steps': 2,
      'checkpoint_every_steps': 2, 'log_every_steps': 2})
  with caplog.at_level(logging.INFO):
    result = train.train_and_evaluate(config, str(tmp_path / 'work'))
  assert result['step'] == 2 and np.isfinite(result['train/loss'])
  assert result['eval/num_examples'] == 4
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert any(all(path in w for path in bad) for w in warnings)
  assert '(4 unreadable files left out)' in caplog.text
