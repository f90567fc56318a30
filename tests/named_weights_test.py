"""Tests for vgg_jax.pretrained.named_weights: the table agrees with itself, our nets and its publishers."""

import inspect
import re

import pytest

from vgg_jax import models
from vgg_jax import pretrained
from vgg_jax.pretrained import named_weights

TABLE = named_weights.WEIGHTS


def our_param_count(entry) -> int:
  """Our net's parameters for the entry; a Keras notop file counts its conv base only."""
  params = models.param_shapes(models.VGG(variant=entry.variant, batch_norm=entry.batch_norm))
  if entry.layout == 'keras' and not entry.include_top:
    params = {k: v for k, v in params.items() if not k.startswith('fc')}
  return models.count_params(params)


@pytest.mark.parametrize('name', TABLE)
def test_entry_is_consistent(name):
  entry = TABLE[name]
  assert entry.name == name and entry.layout in pretrained.SOURCES
  assert entry.num_params == our_param_count(entry)
  assert entry.url.endswith('/' + entry.file_name) and entry.url.startswith('https://')
  if entry.hash_kind == 'sha256':  # torch.hub: the hex after the last dash of the file name.
    assert re.fullmatch(r'[0-9a-f]{8}([0-9a-f]{56})?', entry.hash)
    assert re.search(r'-([a-f0-9]*)\.', entry.file_name).group(1) == entry.hash[:8]
  else:
    assert entry.hash_kind == 'md5' and re.fullmatch(r'[0-9a-f]{32}', entry.hash)
  if entry.size_bytes is not None:
    assert abs(entry.size_bytes / 2**20 - entry.size_mib) < 0.001
  assert (entry.top1 is None) == (entry.top5 is None)
  assert entry.top1 is None or 0 < entry.top1 < entry.top5 < 100
  assert entry.convention.order in ('RGB', 'BGR') and entry.convention.scale in (1.0, 255.0)


def test_the_issue_names_are_all_there():
  want = {f'vgg{d}{bn}' for d in (11, 13, 16, 19) for bn in ('', '_bn')}
  want |= {'vgg16_features', 'vgg16_keras', 'vgg19_keras', 'vgg16_keras_notop',
           'vgg19_keras_notop'}
  assert want <= set(TABLE)


def test_torchvision_entries_equal_torchvisions_own_table():
  vgg = pytest.importorskip('torchvision.models.vgg', reason='needs torchvision')
  published = {}
  for enum in (vgg.VGG11_Weights, vgg.VGG11_BN_Weights, vgg.VGG13_Weights,
               vgg.VGG13_BN_Weights, vgg.VGG16_Weights, vgg.VGG16_BN_Weights,
               vgg.VGG19_Weights, vgg.VGG19_BN_Weights):
    for weights in enum:
      published[weights.url] = weights
  entries = [e for e in TABLE.values() if e.layout == 'torchvision']
  assert len(entries) == len(published) == 9
  for entry in entries:
    theirs = published[entry.url]
    assert entry.num_params == theirs.meta['num_params']
    assert entry.size_mib == theirs.meta['_file_size']
    metrics = theirs.meta['_metrics']['ImageNet-1K']
    if entry.top1 is None:
      assert metrics['acc@1'] != metrics['acc@1']  # NaN: none published.
    else:
      assert (entry.top1, entry.top5) == (metrics['acc@1'], metrics['acc@5'])
    transforms = theirs.transforms()
    assert tuple(transforms.mean) == entry.convention.mean
    assert tuple(transforms.std) == pytest.approx(entry.convention.std, rel=1e-12)


@pytest.mark.parametrize('module', ['vgg16', 'vgg19'])
def test_keras_entries_equal_keras_own_urls_and_hashes(module):
  keras_app = pytest.importorskip(f'keras.src.applications.{module}', reason='needs keras')
  source = inspect.getsource(keras_app)
  for suffix, path in (('keras', keras_app.WEIGHTS_PATH),
                       ('keras_notop', keras_app.WEIGHTS_PATH_NO_TOP)):
    entry = TABLE[f'{module}_{suffix}']
    assert entry.url == path and f'file_hash="{entry.hash}"' in source
    assert entry.include_top == (suffix == 'keras')


def test_unknown_name_lists_the_known_ones():
  with pytest.raises(ValueError, match='known names: vgg11, vgg11_bn, vgg13'):
    named_weights.find('vgg17')


def test_list_shows_every_name_and_what_is_cached():
  text = named_weights.format_table({'vgg16'})
  rows = {line.split()[0]: line for line in text.splitlines()[2:]}
  assert set(rows) == set(TABLE)
  assert ' yes ' in rows['vgg16'] and ' no ' in rows['vgg19']
  assert '138,357,544' in rows['vgg16'] and '71.592' in rows['vgg16'] and '553' in rows['vgg16']
  assert 'BGR 0..255 minus [103.939, 116.779, 123.68]' in rows['vgg16_keras']
