"""Tests for vgg_jax.pretrained: Keras, torchvision and timm imports, fine-tuning, predict."""

import json
import os
import subprocess
import sys

os.environ.setdefault('KERAS_BACKEND', 'jax')

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
from PIL import ImageOps
import pytest

import data_helpers
import run_helpers
from vgg_jax import checkpointing
from vgg_jax.evaluation import protocols
from vgg_jax import models
from vgg_jax import pretrained
from vgg_jax.training import train


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rgb_images(n=2, size=224, seed=0):
  """0..255 RGB images whose channels differ, so a BGR/RGB slip shows."""
  rng = np.random.default_rng(seed)
  base = rng.uniform(0, 255, (n, size, size, 3))
  return (base * np.asarray([1.0, 0.6, 0.2])).astype(np.float32)


def our_logits(out_dir, images_rgb):
  """Logits of an import's directory as pretrained.load rebuilds it (batch norm included)."""
  model, variables, mean_rgb = pretrained.load(str(out_dir))
  return np.asarray(jax.jit(model.apply)(variables, images_rgb - mean_rgb))


def file_logits(path, images_rgb):
  """Logits of a weights file loaded directly: layout, variant and head read from it."""
  model, variables, mean_rgb = pretrained.load(str(path))
  return np.asarray(jax.jit(model.apply)(variables, images_rgb - mean_rgb))


def assert_close(got, expected):
  """float32 through 11-16 layers: agreement to 1e-4 of the logit scale."""
  np.testing.assert_allclose(got, expected, atol=1e-4 * np.abs(expected).max(), rtol=0)


def torch_logits(net, images_rgb, torch):
  """net's eval-mode logits of RGB 0..255 images under torchvision's normalisation."""
  x = (images_rgb / 255.0 - np.asarray(pretrained.TORCH_MEAN)) / np.asarray(pretrained.TORCH_STD)
  with torch.no_grad():
    return net.eval()(torch.from_numpy(x.transpose(0, 3, 1, 2)).float()).numpy()


@pytest.fixture(scope='module')
def keras_vgg16(tmp_path_factory):
  keras = pytest.importorskip('keras', reason='the Keras comparison needs keras')
  h5py = pytest.importorskip('h5py', reason='Keras weight files need h5py')
  from keras.src.legacy.saving import legacy_h5_format  # pylint: disable=g-import-not-at-top
  directory = tmp_path_factory.mktemp('keras')
  keras.utils.set_random_seed(0)
  model = keras.applications.VGG16(weights=None, classifier_activation=None)
  new = directory / 'vgg16.weights.h5'
  model.save_weights(str(new))  # Keras 3 layout.
  classic = directory / 'vgg16_weights_tf_dim_ordering_tf_kernels.h5'
  with h5py.File(classic, 'w') as f:  # The classic layout of the released files.
    legacy_h5_format.save_weights_to_hdf5_group(f, model)
  images = rgb_images()
  caffe = images[..., ::-1] - np.asarray(pretrained.KERAS_MEAN_BGR, np.float32)
  expected = np.asarray(model(caffe, training=False))
  return {'new': new, 'classic': classic, 'images': images, 'logits': expected,
          'dir': directory}


@pytest.mark.slow
@pytest.mark.parametrize('layout', ['new', 'classic'])
def test_keras_vgg16_import_matches_keras_logits(keras_vgg16, layout, tmp_path):
  out = tmp_path / 'imported'
  pretrained.import_weights('keras', str(keras_vgg16[layout]), 'D', str(out))
  got = our_logits(out, keras_vgg16['images'])
  expected = keras_vgg16['logits']
  scale = np.abs(expected).max()
  # float32 through 16 layers: agreement to 1e-4 of the logit scale. A BGR slip or a
  # wrong flatten order moves the logits by tens of percent of it.
  np.testing.assert_allclose(got, expected, atol=1e-4 * scale, rtol=0)
  meta = checkpointing.load_meta(str(out))
  assert meta['preprocessing']['source'] == 'keras'
  assert meta['class_names'][0] == 'n01440764' and len(meta['class_names']) == 1000
  swapped = our_logits(out, keras_vgg16['images'][..., ::-1].copy())
  assert np.abs(swapped - expected).max() > 1e-2 * scale  # The test sees a channel slip.
  assert_close(file_logits(keras_vgg16[layout], keras_vgg16['images']), expected)


@pytest.mark.slow
def test_keras_vgg19_import_matches(tmp_path):
  keras = pytest.importorskip('keras', reason='the Keras comparison needs keras')
  keras.utils.set_random_seed(1)
  model = keras.applications.VGG19(weights=None, classifier_activation=None)
  path = tmp_path / 'vgg19.weights.h5'
  model.save_weights(str(path))
  images = rgb_images(1, seed=3)
  expected = np.asarray(model(images[..., ::-1] - np.asarray(pretrained.KERAS_MEAN_BGR,
                                                            np.float32), training=False))
  pretrained.import_weights('keras', str(path), 'E', str(tmp_path / 'out'))
  got = our_logits(tmp_path / 'out', images)
  np.testing.assert_allclose(got, expected, atol=1e-4 * np.abs(expected).max(), rtol=0)
  with pytest.raises(ValueError, match='holds 16 conv layers, a VGG of variant E; variant D has 13'):
    pretrained.import_weights('keras', str(path), 'D', str(tmp_path / 'wrong'))
  assert not os.path.exists(tmp_path / 'wrong')


def torch_reference_logits(state, images_rgb):
  """torchvision's VGG forward written out in NCHW with OIHW kernels and C,H,W flatten."""
  x = (images_rgb / 255.0 - np.asarray(pretrained.TORCH_MEAN)) / np.asarray(pretrained.TORCH_STD)
  x = jnp.asarray(x.transpose(0, 3, 1, 2), jnp.float32)
  features = sorted({int(k.split('.')[1]) for k in state if k.startswith('features.')})
  pools_after = {1, 3, 5, 7, 9}  # vgg11's conv indices (0-based) followed by a max-pool.
  for i, index in enumerate(features):
    w, b = state[f'features.{index}.weight'], state[f'features.{index}.bias']
    x = jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                                     dimension_numbers=('NCHW', 'OIHW', 'NCHW'))
    x = jax.nn.relu(x + b[None, :, None, None])
    if i in pools_after or i == 0:
      x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2), 'VALID')
  x = x.reshape(x.shape[0], -1)  # C, H, W order, as torch.flatten.
  for j, relu in ((0, True), (3, True), (6, False)):
    x = x @ state[f'classifier.{j}.weight'].T + state[f'classifier.{j}.bias']
    x = jax.nn.relu(x) if relu else x
  return np.asarray(x)


@pytest.fixture(scope='module')
def torch_vgg11(tmp_path_factory):
  """A torchvision vgg11 state dict (random; classifier width 64) as .safetensors."""
  safetensors_numpy = pytest.importorskip(
      'safetensors.numpy', reason='torchvision .safetensors files need safetensors')
  rng = np.random.default_rng(0)
  channels = [3, 64, 128, 256, 256, 512, 512, 512, 512]
  indices = [0, 3, 6, 8, 11, 13, 16, 18]  # torchvision vgg11's conv positions.
  state = {}
  for i, index in enumerate(indices):
    fan_in = channels[i] * 9
    state[f'features.{index}.weight'] = rng.normal(
        0, np.sqrt(2 / fan_in), (channels[i + 1], channels[i], 3, 3)).astype(np.float32)
    state[f'features.{index}.bias'] = rng.normal(0, 0.01, channels[i + 1]).astype(np.float32)
  for j, (fan_in, out) in zip((0, 3, 6), ((512 * 49, 64), (64, 64), (64, 1000))):
    state[f'classifier.{j}.weight'] = rng.normal(0, np.sqrt(2 / fan_in),
                                                 (out, fan_in)).astype(np.float32)
    state[f'classifier.{j}.bias'] = rng.normal(0, 0.01, out).astype(np.float32)
  path = tmp_path_factory.mktemp('torch') / 'vgg11.safetensors'
  safetensors_numpy.save_file(state, str(path))
  return path, state


def test_torchvision_safetensors_import_matches_reference(torch_vgg11, tmp_path):
  path, state = torch_vgg11
  images = rgb_images(2, seed=5)
  expected = torch_reference_logits(state, images)
  pretrained.import_weights('torchvision', str(path), 'A', str(tmp_path / 'out'))
  assert_close(our_logits(tmp_path / 'out', images), expected)
  # A C,H,W vs H,W,C flatten slip would be caught: the two orders differ here.
  params, _ = run_helpers.params_and_meta(tmp_path / 'out')
  naive = state['classifier.0.weight'].T
  assert not np.allclose(params['fc6']['kernel'], naive)


def test_torch_model_built_by_hand_when_torch_is_installed(torch_vgg11, tmp_path):
  torch = pytest.importorskip('torch', reason='the torch comparison needs torch')
  path, state = torch_vgg11
  layers, channels = [], 3
  for out in (64, 'M', 128, 'M', 256, 256, 'M', 512, 512, 'M', 512, 512, 'M'):
    if out == 'M':
      layers.append(torch.nn.MaxPool2d(2))
    else:
      layers += [torch.nn.Conv2d(channels, out, 3, padding=1), torch.nn.ReLU()]
      channels = out
  features = torch.nn.Sequential(*layers)
  classifier = torch.nn.Sequential(torch.nn.Linear(25088, 64), torch.nn.ReLU(), torch.nn.Dropout(),
                                   torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Dropout(),
                                   torch.nn.Linear(64, 1000))
  model = torch.nn.Module()
  model.features, model.classifier = features, classifier
  model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
  model.eval()
  images = rgb_images(1, seed=9)
  x = (images / 255.0 - np.asarray(pretrained.TORCH_MEAN)) / np.asarray(pretrained.TORCH_STD)
  with torch.no_grad():
    feats = model.features(torch.from_numpy(x.transpose(0, 3, 1, 2)).float())
    expected = model.classifier(torch.flatten(feats, 1)).numpy()
  torch.save({k: torch.from_numpy(v) for k, v in state.items()}, tmp_path / 'v.pth')
  pretrained.import_weights('torchvision', str(tmp_path / 'v.pth'), 'A', str(tmp_path / 'out'))
  got = our_logits(tmp_path / 'out', images)
  np.testing.assert_allclose(got, expected, atol=1e-4 * np.abs(expected).max(), rtol=0)


def shrink_head(net, torch):
  """fc6/fc7 64 wide (fc6 still over the 7x7x512 map), so the files stay small."""
  if hasattr(net, 'classifier'):  # torchvision: Linear layers in classifier.0/3/6.
    net.classifier[0], net.classifier[3] = torch.nn.Linear(25088, 64), torch.nn.Linear(64, 64)
    net.classifier[6] = torch.nn.Linear(64, 1000)
  else:  # timm: fc6/fc7 as 7x7 and 1x1 convs, then head.fc.
    net.pre_logits.fc1, net.pre_logits.fc2 = torch.nn.Conv2d(512, 64, 7), torch.nn.Conv2d(64, 64, 1)
    net.head.fc = torch.nn.Linear(64, 1000)
  data_helpers.randomize_batch_norm(net, torch)
  return net.eval()


def save_state(net, path, torch):
  """net's state dict as .safetensors or a pickled .pth, by path's extension."""
  state = {k: v.contiguous() for k, v in net.state_dict().items()}
  if path.suffix == '.safetensors':
    pytest.importorskip('safetensors.torch', reason='writes .safetensors').save_file(
        state, str(path))
  else:
    torch.save(state, path)
  return path


@pytest.fixture(scope='module')
def torchvision_vgg11_bn(tmp_path_factory):
  """torchvision's vgg11_bn (random, BN stats set, fc6/fc7 64 wide): files and logits."""
  torch = pytest.importorskip('torch', reason='the torchvision comparison needs torch')
  torchvision = pytest.importorskip('torchvision', reason='the comparison needs torchvision')
  torch.manual_seed(0)
  net = shrink_head(torchvision.models.vgg11_bn(weights=None), torch)
  directory = tmp_path_factory.mktemp('torchvision_bn')
  images = rgb_images(2, seed=11)
  return {'.safetensors': save_state(net, directory / 'vgg11_bn.safetensors', torch),
          '.pth': save_state(net, directory / 'vgg11_bn.pth', torch),
          'images': images, 'logits': torch_logits(net, images, torch)}


@pytest.fixture(scope='module')
def timm_nets(tmp_path_factory):
  """timm's vgg11 (as .safetensors) and vgg11_bn (as .pth), random: files and logits."""
  torch = pytest.importorskip('torch', reason='the timm comparison needs torch')
  timm = pytest.importorskip('timm', reason='the timm comparison needs timm')
  torch.manual_seed(1)
  directory = tmp_path_factory.mktemp('timm')
  images = rgb_images(2, seed=12)
  nets = {}
  for name, ext in (('vgg11', '.safetensors'), ('vgg11_bn', '.pth')):
    net = shrink_head(timm.create_model(name, pretrained=False), torch)
    nets[name] = {'path': save_state(net, directory / f'{name}{ext}', torch),
                  'images': images, 'logits': torch_logits(net, images, torch)}
  return nets


def test_torchvision_vgg11_bn_import_matches_torchvision(torchvision_vgg11_bn, tmp_path):
  safetensors_numpy = pytest.importorskip('safetensors.numpy', reason='reads .safetensors')
  summary = pretrained.import_weights(
      'torchvision', str(torchvision_vgg11_bn['.safetensors']), 'A', str(tmp_path / 'st'))
  assert summary['batch_norm'] and 'bn4_2' in summary['layers']
  assert_close(our_logits(tmp_path / 'st', torchvision_vgg11_bn['images']),
               torchvision_vgg11_bn['logits'])
  variables, meta = checkpointing.load_variables(str(tmp_path / 'st'))
  assert sorted(variables) == ['batch_stats', 'params']
  assert meta['config']['model']['batch_norm'] is True
  # Eval mode uses running_var itself (eps is added at run time): stored as is.
  state = safetensors_numpy.load_file(str(torchvision_vgg11_bn['.safetensors']))
  np.testing.assert_array_equal(variables['batch_stats']['bn1_1']['var'],
                                state['features.1.running_var'])
  pretrained.import_weights('torchvision', str(torchvision_vgg11_bn['.pth']), 'A',
                            str(tmp_path / 'pth'))
  run_helpers.assert_trees_equal(checkpointing.load_variables(str(tmp_path / 'pth'))[0], variables)
  assert_close(file_logits(torchvision_vgg11_bn['.pth'], torchvision_vgg11_bn['images']),
               torchvision_vgg11_bn['logits'])  # Read without torch (vgg_jax.pretrained.torch_files).


@pytest.mark.parametrize('name', ['vgg11', 'vgg11_bn'])
def test_timm_import_matches_timm(timm_nets, name, tmp_path):
  net = timm_nets[name]
  summary = pretrained.import_weights('timm', str(net['path']), 'A', str(tmp_path / 'out'))
  assert summary['batch_norm'] == name.endswith('_bn')
  assert_close(our_logits(tmp_path / 'out', net['images']), net['logits'])
  meta = checkpointing.load_meta(str(tmp_path / 'out'))
  assert meta['preprocessing']['source'] == 'timm'
  assert meta['preprocessing']['mean_rgb'] == [255.0 * m for m in pretrained.TORCH_MEAN]
  assert_close(file_logits(net['path'], net['images']), net['logits'])  # timm's keys told.


def test_torch_bad_inputs_name_the_problem_and_leave_nothing(torchvision_vgg11_bn, timm_nets,
                                                             tmp_path):
  safetensors_numpy = pytest.importorskip('safetensors.numpy', reason='writes .safetensors')
  out, bn_file = tmp_path / 'out', str(torchvision_vgg11_bn['.safetensors'])
  timm_file = str(timm_nets['vgg11']['path'])
  with pytest.raises(ValueError, match="Unknown source 'onnx'"):
    pretrained.import_weights('onnx', bn_file, 'A', str(out))
  with pytest.raises(ValueError, match=r'holds 8 conv layers, a VGG of variant A '
                     r'\(torchvision vgg11_bn\); variant D \(vgg16_bn\) has 13'):
    pretrained.import_weights('torchvision', bn_file, 'D', str(out))
  with pytest.raises(ValueError, match=r'holds 8 conv layers, a VGG of variant A '
                     r'\(timm vgg11\); variant E \(vgg19\) has 16'):
    pretrained.import_weights('timm', timm_file, 'E', str(out))
  with pytest.raises(ValueError, match='pass --source=torchvision'):
    pretrained.import_weights('timm', bn_file, 'A', str(out))
  with pytest.raises(ValueError, match='pass --source=timm'):
    pretrained.import_weights('torchvision', timm_file, 'A', str(out))
  state = safetensors_numpy.load_file(bn_file)
  del state['features.1.running_var']
  safetensors_numpy.save_file(state, str(tmp_path / 'no_var.safetensors'))
  with pytest.raises(ValueError, match=r"incomplete BatchNorm layers: "
                     r"\['features.1.running_var'\] missing"):
    pretrained.import_weights('torchvision', str(tmp_path / 'no_var.safetensors'), 'A', str(out))
  assert not os.path.exists(out)
  assert [p for p in os.listdir(tmp_path) if p.startswith('.import-')] == []


@pytest.mark.slow
def test_bad_inputs_name_the_problem_and_leave_nothing(keras_vgg16, torch_vgg11, tmp_path):
  keras = pytest.importorskip('keras', reason='the Keras comparison needs keras')
  out = tmp_path / 'out'
  with pytest.raises(ValueError, match="Unknown source 'caffe'"):
    pretrained.import_weights('caffe', str(keras_vgg16['new']), 'D', str(out))
  notop = tmp_path / 'vgg16_notop.weights.h5'
  keras.applications.VGG16(weights=None, include_top=False).save_weights(str(notop))
  with pytest.raises(ValueError, match='"notop" file'):
    pretrained.import_weights('keras', str(notop), 'D', str(out))
  truncated = tmp_path / 'truncated.h5'
  truncated.write_bytes(open(keras_vgg16['new'], 'rb').read()[:100_000])
  with pytest.raises(ValueError, match='not a readable HDF5 file'):
    pretrained.import_weights('keras', str(truncated), 'D', str(out))
  half = tmp_path / 'half.safetensors'
  half.write_bytes(open(torch_vgg11[0], 'rb').read()[:50_000])
  with pytest.raises(ValueError, match='not a readable safetensors file'):
    pretrained.import_weights('torchvision', str(half), 'A', str(out))
  pth = tmp_path / 'vgg16.pth'
  pth.write_bytes(b'\x80\x02pickled')
  with pytest.raises(ValueError, match='not a torch.save file'):
    pretrained.import_weights('torchvision', str(pth), 'D', str(out))
  with pytest.raises(ValueError, match='holds 8 conv layers, a VGG of variant A'):
    pretrained.import_weights('torchvision', str(torch_vgg11[0]), 'D', str(out))
  assert not os.path.exists(out)
  assert [p for p in os.listdir(tmp_path) if p.startswith('.import-')] == []


@pytest.mark.slow
def test_notop_import_gives_the_conv_base(keras_vgg16, tmp_path):
  keras = pytest.importorskip('keras', reason='the Keras comparison needs keras')
  notop = tmp_path / 'notop.weights.h5'
  keras.applications.VGG16(weights=None, include_top=False).save_weights(str(notop))
  pretrained.import_weights('keras', str(notop), 'D', str(tmp_path / 'out'), include_top=False)
  params, _ = run_helpers.params_and_meta(tmp_path / 'out')
  assert sorted(params) == sorted(n for n in models.layer_names('D') if n.startswith('conv'))


def write_two_class_folder(root, size=40, count=16):
  """Dark images are class 'a', bright ones class 'b': an easy, learnable task."""
  rng = np.random.default_rng(0)
  for split in ('train', 'validation'):
    for name, low in (('a', 0), ('b', 150)):
      os.makedirs(root / split / name)
      for i in range(count if split == 'train' else 4):
        pixels = rng.integers(low, low + 100, (size, size, 3)).astype(np.uint8)
        Image.fromarray(pixels).save(root / split / name / f'{i}.png')


@pytest.fixture(scope='module')
def source(tmp_path_factory):
  """A small trained digits run standing in for imported weights."""
  workdir = tmp_path_factory.mktemp('pretrained')
  train.train_and_evaluate(run_helpers.tiny_config(num_train_steps=2), str(workdir))
  return workdir


@pytest.mark.parametrize('head', ['fc8', 'small'])
def test_finetune_freezes_the_conv_base_and_learns_the_head(tmp_path, head, source):
  folder = tmp_path / 'folder'
  write_two_class_folder(folder)
  from experiments.configs import finetune  # pylint: disable=g-import-not-at-top
  config = finetune.get_config(head)
  config.model.update(variant='A', width=0.0625, fc_width=32, image_size=32, head_width=16)
  config.init_layers = tuple(n for n in models.layer_names('A')
                             if n.startswith('conv') or (head == 'fc8' and n in ('fc6', 'fc7')))
  config.data.update(folder=str(folder), scale_min=32, scale_max=36, eval_scale=32)
  config.init_from = str(source)
  config.optimizer.learning_rate = 0.05
  config.update(global_batch_size=16, eval_batch_size=16, num_train_steps=30,
                log_every_steps=10, eval_every_steps=30, checkpoint_every_steps=30)
  result = train.train_and_evaluate(config, str(tmp_path / 'run'))
  before, _ = run_helpers.params_and_meta(source)
  after, meta = run_helpers.params_and_meta(tmp_path / 'run')
  for layer in after:
    if layer.startswith('conv'):
      run_helpers.assert_trees_equal(after[layer], before[layer])  # Bit-identical.
  new_head = 'fc8' if head == 'fc8' else 'head2'
  assert after[new_head]['kernel'].shape[-1] == 2 and meta['class_names'] == ['a', 'b']
  assert result['eval/top1_error'] <= 0.25  # Chance is 0.5.
  assert meta['config']['data']['mean_rgb'] == [40.0, 40.0, 40.0]  # From the source.


@pytest.mark.slow
def test_predict_prints_names(tmp_path, source):
  image = tmp_path / 'seven.png'
  Image.fromarray(np.full((48, 40, 3), 200, np.uint8)).save(image)
  result = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'launch.py'), '--mode=predict', f'--workdir={source}',
       str(image), '--config.eval.protocol=dense'], capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stdout.strip().splitlines()
  assert lines[0] == str(image) and len(lines) == 6
  # Only the answer: no Orbax read-only warnings, no progress log lines from our code.
  assert 'read only' not in result.stderr and 'Metadata file' not in result.stderr
  assert not [l for l in result.stderr.splitlines() if 'launch.py' in l or 'protocols.py' in l]
  names = [line.split()[-1] for line in lines[1:]]
  assert set(names) <= {str(d) for d in range(10)} and len(set(names)) == 5
  probabilities = [float(line.split('%')[0]) for line in lines[1:]]
  assert probabilities == sorted(probabilities, reverse=True)
  with pytest.raises(FileNotFoundError, match='No such image file'):
    protocols.predict(run_helpers.tiny_config().eval, str(source), [str(tmp_path / 'nope.jpg')])


def test_predict_applies_exif_orientation(tmp_path, source):
  # A phone photo stored sideways with orientation 6 ("rotate 90 clockwise to view").
  upright = np.random.default_rng(3).integers(0, 256, (48, 80, 3), dtype=np.uint8)
  Image.fromarray(upright).save(tmp_path / 'upright.png')
  stored = Image.fromarray(np.ascontiguousarray(np.rot90(upright, k=1)))  # As the camera wrote.
  exif = Image.Exif()
  exif[0x0112] = 6
  stored.save(tmp_path / 'sideways.png', exif=exif)
  viewed = ImageOps.exif_transpose(Image.open(tmp_path / 'sideways.png'))
  assert np.array_equal(np.asarray(viewed), upright)
  config = run_helpers.tiny_config().eval
  config.protocol, config.scales = 'dense', (32,)
  (_, upright_top), (_, sideways_top) = protocols.predict(
      config, str(source), [str(tmp_path / 'upright.png'), str(tmp_path / 'sideways.png')])
  np.testing.assert_allclose([p for _, p in sideways_top], [p for _, p in upright_top],
                             rtol=1e-5)
  assert [n for n, _ in sideways_top] == [n for n, _ in upright_top]


def test_load_gives_a_training_runs_model_and_its_computed_mean(tmp_path):
  """pretrained.load of a run: the best checkpoint, and the mean RGB it computed at train time."""
  workdir = tmp_path / 'run'
  config = run_helpers.tiny_config(**{'data.mean_rgb': None, 'num_train_steps': 8})
  train.train_and_evaluate(config, str(workdir))
  model, variables, mean_rgb = pretrained.load(str(workdir))
  cached = json.load(open(workdir / 'rgb_stats_train.json'))['mean_rgb']
  np.testing.assert_allclose(mean_rgb, cached, rtol=1e-6)
  assert mean_rgb.shape == (3,) and 0 < mean_rgb.min() < 255
  best = checkpointing.resolve_step(str(workdir), 'best')
  expected_model, expected, _, _ = pretrained.load_checkpoint(str(workdir), best)
  assert model == expected_model and set(variables) == {'params'}
  jax.tree_util.tree_map(np.testing.assert_array_equal, variables, expected)
  images = rgb_images(3, size=32, seed=3)
  logits = model.apply(variables, images - mean_rgb)
  assert logits.shape == (3, 10) and np.all(np.isfinite(logits))
  latest = pretrained.load(str(workdir), checkpoint='latest')[1]
  assert set(latest) == {'params'}
  os.remove(workdir / 'rgb_stats_train.json')
  with pytest.raises(FileNotFoundError, match='computed mean RGB, but its cache'):
    pretrained.load(str(workdir))
