"""Tests for experiments.style_transfer: Adam and L-BFGS lower the loss, files, errors."""

from absl import flags
from absl.testing import flagsaver
import jax
import numpy as np
from PIL import Image
import pytest

from experiments import style_transfer
from vgg_jax import models
from vgg_jax import pretrained

# Layers that exist in VGG-A (the defaults do too, but relu5_1 of a 36 px image is 2x3).
LAYERS = {'content_layers': ('relu3_2',), 'style_layers': ('relu1_1', 'relu2_1', 'relu3_1')}


@pytest.fixture(name='weights', scope='module')
def weights_fixture(tmp_path_factory):
  """A randomly initialised tiny VGG-A written as pretrained's imports are."""
  out = tmp_path_factory.mktemp('style') / 'vgg'
  model = models.VGG(variant='A', width=0.125, fc_width=32, num_classes=10, image_size=32)
  params = models.init_variables(model, jax.random.key(0))['params']
  params = jax.tree_util.tree_map(np.asarray, params)
  pretrained.write_checkpoint(str(out), {'params': params}, model,
                              pretrained.preprocessing('keras'), [str(i) for i in range(10)],
                              True, 'random-init')
  return str(out)


@pytest.fixture(name='images', scope='module')
def images_fixture(tmp_path_factory):
  """content.png: a 64x48 colour gradient; style.jpg: 40x40 stripes."""
  root = tmp_path_factory.mktemp('images')
  y, x = np.mgrid[0:48, 0:64]
  gradient = np.stack([x * 4, y * 5, 255 - x * 4], axis=-1).astype(np.uint8)
  Image.fromarray(gradient).save(root / 'content.png')
  y, x = np.mgrid[0:40, 0:40]
  stripes = np.stack([(x // 4) % 2, (y // 4) % 2, ((x + y) // 6) % 2], axis=-1) * 255
  Image.fromarray(stripes.astype(np.uint8)).save(root / 'style.jpg')
  return str(root / 'content.png'), str(root / 'style.jpg')


@pytest.mark.parametrize('optimizer, steps, init', [('adam', 10, 'content'),
                                                     ('lbfgs', 3, 'noise')])
def test_loss_falls_and_both_pngs_are_written(weights, images, tmp_path, optimizer, steps,
                                              init):
  options = style_transfer.Options(size=48, steps=steps, optimizer=optimizer, init=init,
                                   log_every=5, **LAYERS)
  out = str(tmp_path / 'styled.png')
  result = style_transfer.stylize(weights, *images, out, options)
  losses = result['losses']
  assert losses.shape == (steps + 1,) and np.all(np.isfinite(losses))
  assert losses[-1] < losses[0], losses
  with Image.open(out) as image:
    assert image.format == 'PNG' and image.mode == 'RGB'
    assert image.size == (48, 36)  # The content's 64x48, longer side --size.
    pixels = np.asarray(image, np.float32)
  content = np.asarray(Image.open(images[0]).resize((48, 36)), np.float32)
  assert np.abs(pixels - content).mean() > 0.1  # The pixels moved.
  assert result['loss_plot'] == str(tmp_path / 'styled_loss.png')
  with Image.open(result['loss_plot']) as plot:
    assert plot.format == 'PNG' and min(plot.size) > 100


def test_layers_not_in_the_model_raise_naming_the_valid_ones(weights, images, tmp_path):
  options = style_transfer.Options(size=48, steps=1, content_layers=('relu3_2',),
                                   style_layers=('relu1_1', 'relu5_4'))
  with pytest.raises(ValueError, match=r"\['relu5_4'\] are not in VGG-A.*relu5_2, pool5"):
    style_transfer.stylize(weights, *images, str(tmp_path / 'out.png'), options)


def test_bad_inputs_name_the_problem(weights, images, tmp_path):
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  missing = str(tmp_path / 'missing.jpg')
  with flagsaver.flagsaver(weights=weights, content=missing, style=images[1],
                           out=str(tmp_path / 'out.png')):
    with pytest.raises(FileNotFoundError, match='No such image file: .*missing.jpg'):
      style_transfer.main(['style_transfer'])
  (tmp_path / 'notes.png').write_text('not an image')
  with pytest.raises(ValueError, match='notes.png is not a readable image'):
    style_transfer.stylize(weights, str(tmp_path / 'notes.png'), images[1],
                           str(tmp_path / 'out.png'))
  with pytest.raises(ValueError, match='--size=16 is below 32'):
    style_transfer.stylize(weights, *images, str(tmp_path / 'out.png'),
                           style_transfer.Options(size=16))
  Image.new('RGB', (200, 40)).save(tmp_path / 'wide.png')
  with pytest.raises(ValueError, match='is 48x10: VGG needs at least 32 px'):
    style_transfer.stylize(weights, str(tmp_path / 'wide.png'), images[1],
                           str(tmp_path / 'out.png'), style_transfer.Options(size=48))
  with pytest.raises(FileNotFoundError, match='No checkpoint directory'):
    style_transfer.stylize(str(tmp_path / 'nowhere'), *images, str(tmp_path / 'out.png'),
                           style_transfer.Options(size=48))
  assert not (tmp_path / 'out.png').exists()
