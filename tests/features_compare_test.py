"""Named features of imported weights == the source framework's own layers (features.extract)."""

import os

os.environ.setdefault('KERAS_BACKEND', 'jax')

import jax
import numpy as np
import pytest

import data_helpers
from vgg_jax import features
from vgg_jax import models
from vgg_jax import pretrained

SIZE = 64  # Conv layers only: any size >= 32 runs, and 64 keeps pool5 2x2.


def rgb_images(n=2, size=SIZE, seed=0):
  """0..255 RGB images whose channels differ, so a BGR/RGB slip shows."""
  rng = np.random.default_rng(seed)
  return (rng.uniform(0, 255, (n, size, size, 3)) * np.asarray([1.0, 0.6, 0.2])).astype(
      np.float32)


def our_features(out_dir, images, layers):
  """features.extract of an import's directory, as pretrained.load gives it."""
  model, variables, mean_rgb = pretrained.load(str(out_dir))
  extract = jax.jit(lambda v, x: features.extract(model, v, x, tuple(layers)))
  return model, {k: np.asarray(v) for k, v in extract(variables, images - mean_rgb).items()}


def assert_close(got, expected, name):
  """Agreement to 1e-4 of the activation's scale (float32 through up to 13 convs)."""
  scale = np.abs(expected).max()
  assert scale > 0, name
  np.testing.assert_allclose(got, expected, atol=1e-4 * scale, rtol=0, err_msg=name)


@pytest.mark.parametrize('builder, variant, layers', [
    ('vgg16', 'D', ('conv1_1', 'relu1_2', 'conv3_3', 'relu4_3', 'pool5')),
    ('vgg11_bn', 'A', ('conv1_1', 'bn1_1', 'relu2_1', 'conv3_2', 'bn4_2', 'pool5')),
])
def test_torchvision_features_match_slices_of_its_features(builder, variant, layers, tmp_path):
  torch = pytest.importorskip('torch', reason='the torchvision comparison needs torch')
  torchvision = pytest.importorskip('torchvision', reason='the comparison needs torchvision')
  safetensors_torch = pytest.importorskip('safetensors.torch', reason='writes .safetensors')
  torch.manual_seed(1)
  net = getattr(torchvision.models, builder)(weights=None)
  data_helpers.randomize_batch_norm(net, torch)
  net.eval()
  state = {k: v.contiguous() for k, v in net.state_dict().items() if k.startswith('features.')}
  safetensors_torch.save_file(state, str(tmp_path / f'{builder}.safetensors'))
  pretrained.import_weights('torchvision', str(tmp_path / f'{builder}.safetensors'), variant,
                            str(tmp_path / 'out'), include_top=False)
  images = rgb_images()
  model, got = our_features(tmp_path / 'out', images, layers)
  assert model.batch_norm == builder.endswith('_bn')
  x = (images / 255.0 - np.asarray(pretrained.TORCH_MEAN)) / np.asarray(pretrained.TORCH_STD)
  x = torch.from_numpy(x.transpose(0, 3, 1, 2)).float()
  kinds = {'conv': torch.nn.Conv2d, 'bn': torch.nn.BatchNorm2d, 'relu': torch.nn.ReLU,
           'pool': torch.nn.MaxPool2d}
  for name in layers:
    # Up to pool5 our feature names and torchvision's features[i] line up one to one.
    k = models.feature_names(variant, model.batch_norm).index(name) + 1
    assert isinstance(net.features[k - 1], kinds[name.rstrip('0123456789_')]), name
    with torch.no_grad():
      expected = net.features[:k](x).numpy().transpose(0, 2, 3, 1)  # NCHW -> NHWC.
    assert_close(got[name], expected, name)


def test_keras_vgg16_features_match_its_layers(tmp_path):
  keras = pytest.importorskip('keras', reason='the Keras comparison needs keras')
  pytest.importorskip('h5py', reason='Keras weight files need h5py')
  keras.utils.set_random_seed(2)
  base = keras.applications.VGG16(weights=None, include_top=False, input_shape=(SIZE, SIZE, 3))
  base.save_weights(str(tmp_path / 'vgg16_notop.weights.h5'))
  pretrained.import_weights('keras', str(tmp_path / 'vgg16_notop.weights.h5'), 'D',
                            str(tmp_path / 'out'), include_top=False)
  images = rgb_images(seed=4)
  # Keras's Conv2D has the ReLU built in (activation='relu'): block4_conv3 is our relu4_3.
  pairs = {'block1_conv1': 'relu1_1', 'block4_conv3': 'relu4_3', 'block5_pool': 'pool5'}
  taps = keras.Model(base.input, [base.get_layer(name).output for name in pairs])
  caffe = images[..., ::-1] - np.asarray(pretrained.KERAS_MEAN_BGR, np.float32)
  expected = [np.asarray(e) for e in taps(caffe, training=False)]
  _, got = our_features(tmp_path / 'out', images, list(pairs.values()) + ['conv4_3'])
  for keras_name, ours, want in zip(pairs, pairs.values(), expected):
    assert_close(got[ours], want, f'{keras_name} vs {ours}')
  assert got['conv4_3'].min() < 0 <= expected[1].min()  # conv4_3 is before the ReLU.
