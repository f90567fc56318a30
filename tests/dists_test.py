"""vgg_jax.dists against the DISTS_pytorch package itself: a seeded random trunk, its wheel's
alpha and beta."""

import base64
import copy
import importlib.metadata
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import data_helpers  # tests/ is on sys.path
import hostile_files
import http_server
import torch_reference
from vgg_jax import dists
from vgg_jax import perceptual
from vgg_jax import pretrained
from vgg_jax.pretrained import download
from vgg_jax.pretrained import named_weights
from vgg_jax.pretrained import untrusted

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
torch = pytest.importorskip('torch', reason='the reference is PyTorch')
torchvision = pytest.importorskip('torchvision', reason="the reference's trunk")
reference_dists = pytest.importorskip('DISTS_pytorch', reason='the reference package')
from DISTS_pytorch import DISTS_pt  # pylint: disable=g-import-not-at-top,wrong-import-position

# Odd sides and a 16x16 (relu5_3 1x1); the fast tier runs the first two distances and
# the first gradients (each new shape compiles VGG-16 again: 2-7 s).
SHAPES = [(2, 48, 80), (3, 16, 16), pytest.param((2, 64, 64), marks=pytest.mark.slow),
          pytest.param((1, 37, 50), marks=pytest.mark.slow)]
GRADIENT_SHAPES = [(3, 16, 16)] + [pytest.param(s, marks=pytest.mark.slow)
                                   for s in ((2, 48, 80), (2, 64, 64), (1, 37, 50))]


def wheel_weights() -> str:
  """alpha and beta as the installed DISTS_pytorch wheel ships them, beside its code."""
  return os.path.join(os.path.dirname(reference_dists.__file__), 'weights.pt')


@pytest.fixture(name='trunk', scope='module')
def trunk_fixture(tmp_path_factory):
  """A seeded random torchvision VGG-16's conv layers, saved in torchvision's layout."""
  torch.manual_seed(0)
  features = torchvision.models.vgg16(weights=None).features.state_dict()
  path = str(tmp_path_factory.mktemp('trunk') / 'vgg16_random.pth')
  torch.save({f'features.{k}': v for k, v in features.items()}, path)
  return path


@pytest.fixture(name='reference', scope='module')
def reference_fixture(trunk):
  """DISTS_pytorch's DISTS on the trunk and the wheel's weights.pt.

  Its constructor asks torchvision for the ImageNet vgg16 (a download): it is handed the
  random one instead. It would read alpha and beta from <sys.prefix>/weights.pt, where
  the wheel's data_files put a second copy: they are read from the package's own copy.
  """
  vgg = torchvision.models.vgg16(weights=None)
  vgg.features.load_state_dict({k.split('.', 1)[1]: v for k, v in torch.load(trunk).items()})
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(DISTS_pt.models, 'vgg16', lambda **unused: vgg)
    reference = DISTS_pt.DISTS(load_weights=False)
  state = torch.load(wheel_weights())
  reference.alpha.data, reference.beta.data = state['alpha'], state['beta']
  return reference.eval()


@pytest.fixture(name='metric', scope='module')
def metric_fixture(trunk):
  return dists.load(backbone=trunk, weights=wheel_weights())


def image_pair(shape, seed):
  """Two [0, 1] batches: uniform noise, and a darker, noisier copy of it (DISTS ~0.1).

  Not a near-identical pair: DISTS is 1 minus a sum near 1, so at DISTS ~0.01 float32
  rounding of that sum alone moves the reference 1e-5 (relative) from its own float64
  value, and 1e-5 would test the reference's rounding, not ours.
  """
  rng = np.random.default_rng(seed)
  x0 = rng.uniform(0, 1, shape + (3,)).astype(np.float32)
  x1 = np.clip(0.6 * x0 + rng.normal(0, 0.1, x0.shape), 0, 1).astype(np.float32)
  return x0, x1


def test_weights_are_the_wheels_and_its_record_gives_their_hash(metric, reference):
  """Ours read without torch equal the reference's; the registered entry's sha256 and size
  are those the wheel's RECORD gives both of its copies (the package's and sys.prefix's)."""
  np.testing.assert_array_equal(metric.alpha, reference.alpha.detach().numpy().reshape(-1))
  np.testing.assert_array_equal(metric.beta, reference.beta.detach().numpy().reshape(-1))
  assert metric.alpha.shape == (dists.TOTAL_CHANNELS,) == (1475,)
  entry = named_weights.DISTS_WEIGHTS['dists_vgg16']
  copies = [f for f in importlib.metadata.distribution('DISTS_pytorch').files
            if f.name == 'weights.pt']
  assert sorted(str(f) for f in copies) == ['../../../weights.pt', 'DISTS_pytorch/weights.pt']
  for record in copies:
    assert record.hash.mode == 'sha256' and record.size == entry.size_bytes
    assert base64.urlsafe_b64decode(record.hash.value + '=').hex() == entry.hash
  assert download.digest(wheel_weights(), 'sha256') == entry.hash
  assert entry.url.endswith('/DISTS_pytorch/weights.pt') and entry.file_name == 'dists_vgg16.pt'


@pytest.mark.parametrize('size', [(16, 16), (17, 23), (5, 2)])
def test_l2_pool_equals_the_references(size):
  """The separable form of the 3x3 Hanning window equals the reference's L2pooling."""
  x = np.random.default_rng(size[0]).normal(size=(2,) + size + (6,)).astype(np.float32)
  with torch.no_grad():
    expected = DISTS_pt.L2pooling(channels=6)(torch_reference.nchw(x)).numpy().transpose(0, 2, 3, 1)
  got = dists.l2_pool(jnp.asarray(x))
  assert got.shape == (2, -(-size[0] // 2), -(-size[1] // 2), 6) == expected.shape
  np.testing.assert_allclose(got, expected, rtol=1e-6, atol=0)
  assert dists.WINDOW == (0.25, 0.5, 0.25)


@pytest.mark.parametrize('shape', SHAPES)
def test_distances_equal_the_reference(metric, reference, shape):
  x0, x1 = image_pair(shape, seed=sum(shape))
  with torch.no_grad():
    expected = reference(torch_reference.nchw(x0), torch_reference.nchw(x1)).reshape(-1).numpy()
  got = metric(x0, x1)
  assert got.shape == (shape[0],) and got.dtype == jnp.float32
  assert (expected > 0.05).all()  # Far from the float32 cancellation (image_pair).
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=0)


def test_feature_sets_equal_the_reference_stages(metric, reference):
  """The six sets (the image, then relu1_2 .. relu5_3 behind L2 pools) at odd sides."""
  x = image_pair((1, 37, 50), seed=3)[0]
  with torch.no_grad():
    expected = [f.numpy().transpose(0, 2, 3, 1)
                for f in reference.forward_once(torch_reference.nchw(x))]
  got = jax.jit(dists.feature_sets)(metric, jnp.asarray(x))
  assert [f.shape[-1] for f in got] == list(dists.CHANNELS) == [3, 64, 128, 256, 512, 512]
  assert [f.shape[1:3] for f in got] == [(37, 50), (37, 50), (19, 25), (10, 13), (5, 7), (3, 4)]
  for k, (g, e) in enumerate(zip(got, expected)):
    np.testing.assert_allclose(g, e, rtol=0, atol=1e-5 * np.abs(e).max(), err_msg=str(k))


@pytest.mark.parametrize('shape', GRADIENT_SHAPES)
def test_gradients_equal_the_reference_in_float64(trunk, reference, shape):
  """The same function, differentiated, in float64 on both sides (no ReLU input is left
  within rounding of its kink)."""
  x0, x1 = image_pair(shape, seed=sum(shape))
  expected = torch_reference.reference_gradients(reference, x0, x1, torch.float64,
                                                require_grad=True)
  with jax.enable_x64(True):
    ours = dists.load(backbone=trunk, weights=wheel_weights(), dtype='float64')
    got = jax.grad(lambda a, b: ours(a, b).sum(), argnums=(0, 1))(
        x0.astype(np.float64), x1.astype(np.float64))
    assert got[0].dtype == jnp.float64
    torch_reference.assert_gradients_close(got, expected, rtol=1e-4)


def test_jit_and_pytree(metric, reference):
  """The metric passes through jit as an argument and maps as a pytree: alpha and beta
  scaled together leave DISTS as it is (they are divided by their joint sum); beta zeroed
  leaves the texture terms only, as in the reference."""
  x0, x1 = image_pair((2, 48, 80), seed=5)
  eager = metric(x0, x1)
  jitted = jax.jit(lambda m, a, b: m(a, b))
  np.testing.assert_allclose(jitted(metric, x0, x1), eager, rtol=1e-6)
  assert len(jax.tree_util.tree_leaves(metric)) == 2 * 13 + 2  # 13 convs' kernel and bias.
  scaled = jax.tree_util.tree_map(lambda v: v * 3.0, metric)  # Every leaf, trunk too.
  np.testing.assert_allclose(scaled.variables['params']['conv1_1']['kernel'],
                             3 * metric.variables['params']['conv1_1']['kernel'])
  weights_scaled = scaled.replace(variables=metric.variables)
  np.testing.assert_allclose(jitted(weights_scaled, x0, x1), eager, rtol=1e-5)
  texture_only = metric.replace(beta=jnp.zeros_like(metric.beta))
  with torch.no_grad():
    reference_copy = copy.deepcopy(reference)
    reference_copy.beta.zero_()
    expected = reference_copy(torch_reference.nchw(x0), torch_reference.nchw(x1))
  expected = expected.reshape(-1).numpy()
  np.testing.assert_allclose(jitted(texture_only, x0, x1), expected, rtol=1e-5)


@pytest.mark.slow  # Compiles VGG-16's forward and backward.
def test_gradients_in_float32(metric, reference):
  """Our float32 gradients, jit-compiled with the metric as an argument, match the
  reference's float32 ones to 1e-3 of their largest (float64 checks them to 1e-4)."""
  x0, x1 = image_pair((2, 32, 48), seed=5)
  grads = jax.jit(jax.grad(lambda m, a, b: m(a, b).sum(), argnums=(1, 2)))(metric, x0, x1)
  expected = torch_reference.reference_gradients(reference, x0, x1, torch.float32,
                                                require_grad=True)
  torch_reference.assert_gradients_close(grads, expected, rtol=1e-3)


@pytest.mark.slow  # Compiles VGG-16 in bfloat16, forward and backward.
def test_bfloat16_trunk(trunk, metric):
  x0, x1 = image_pair((2, 32, 48), seed=5)
  half = dists.load(backbone=trunk, weights=wheel_weights(), dtype='bfloat16')
  assert half.trunk.dtype == jnp.bfloat16
  got = half(x0, x1)
  assert got.dtype == jnp.float32  # Activations bfloat16, pooling and statistics float32.
  np.testing.assert_allclose(got, metric(x0, x1), rtol=5e-2)
  grads = jax.grad(lambda a: half(a, x1).sum())(x0)
  assert grads.dtype == jnp.float32 and np.isfinite(np.asarray(grads)).all()


def test_bad_images_get_clear_errors(metric):
  """The checks are perceptual.check_pair's (the LPIPS tests run each); here, DISTS's range,
  its smallest size, and that a bad pair is named before anything runs."""
  x0, x1 = image_pair((1, 32, 32), seed=0)
  cases = [
      (r'x1 has values in \[-1, [\d.]+\]; DISTS takes images in \[0, 1\] \(RGB as '
       r"torchvision's ToTensor gives it: u / 255 for 8-bit u, \(x \+ 1\) / 2 for images in "
       r'\[-1, 1\]\)\.', x0, 2 * x1 - 1),
      (r'x0 has values in \[0, 255\]', np.where(x0 > 0.5, 255.0, 0.0).astype(np.float32), x1),
      (r'x0 has values in \[nan', np.full_like(x0, np.nan), x1),
      (r'x0 is uint8; DISTS takes float images in \[0, 1\] \(uint8 u: u / 255\)\.',
       np.zeros((1, 32, 32, 3), np.uint8), x1),
      (r'x0 has shape \(1, 32, 32, 1\); DISTS takes RGB batches', x0[..., :1], x1[..., :1]),
      (r'x1 has shape \(32, 32, 3\); DISTS takes RGB batches', x0, x1[0]),
      (r'x0 and x1 differ in shape, \(1, 32, 32, 3\) and \(1, 32, 40, 3\): DISTS compares',
       x0, np.zeros((1, 32, 40, 3), np.float32)),
      (r'DISTS needs images of at least 16x16 \(relu5_3 is behind four stride-2 L2 pools\), '
       r'got 15x32', x0[:, :15], x1[:, :15]),
  ]
  for message, a, b in cases:
    with pytest.raises(ValueError, match=message):
      metric(a, b)
  # Inside jit and grad the values are unknown: only shapes are checked there.
  with pytest.raises(ValueError, match='differ in shape'):
    jax.jit(lambda a: metric(a, x1[:, :16]))(x0)


def weights_file(path, **changes):
  """The wheel's alpha and beta saved by torch.save, with changes (None drops a key)."""
  state = torch.load(wheel_weights())
  state.update(changes)
  torch.save({k: v for k, v in state.items() if v is not None}, str(path))
  return str(path)


def test_bad_weights_get_clear_errors(trunk, tmp_path):
  good = torch.load(wheel_weights())['alpha']
  negative, nan = good.clone(), good.clone()
  negative[0, 100] = -0.5
  nan[0, 7] = float('nan')
  cases = {
      r'has no beta: not a DISTS weights file; its keys: alpha': dict(beta=None),
      r'alpha is float32 of shape \(1, 1474, 1, 1\); DISTS needs floats of shape '
      r'\(1, 1475, 1, 1\)': dict(alpha=good[:, 1:]),
      r'beta is int64 of shape': dict(beta=torch.ones(1, 1475, 1, 1, dtype=torch.int64)),
      r'alpha has negative, infinite or NaN weights \(least -0.5\)': dict(alpha=negative),
      r'alpha has negative, infinite or NaN weights': dict(alpha=nan),
      r'alpha and beta are all zero': dict(alpha=good * 0, beta=good * 0),
  }
  for i, (message, changes) in enumerate(cases.items()):
    path = weights_file(tmp_path / f'{i}.pt', **changes)
    with pytest.raises(untrusted.WeightsFileError, match=message):
      dists.read_weights(path)
  # A file whose pickle runs code when trusted: refused by name, the code never runs.
  marker = str(tmp_path / 'PAYLOAD_RAN')
  items = {key: hostile_files.op_tensor(hostile_files.storage_pid(key, 1475), 0,
                                        (1, 1475, 1, 1), (1475, 1, 1, 1))
           for key in ('alpha', 'beta')}
  hostile_files.write_torch_zip(
      str(tmp_path / 'hostile.pt'),
      hostile_files.state_pickle(items, hostile_files.payload(marker)),
      {key: np.ones(1475, np.float32).tobytes() for key in ('alpha', 'beta')})
  with pytest.raises(untrusted.WeightsFileError, match=r'hostile.pt: .*names os\.system'):
    dists.read_weights(str(tmp_path / 'hostile.pt'))
  assert not os.path.exists(marker)
  with pytest.raises(ValueError, match="'dists_vgg19' is no registered name; known names: "
                     'dists_vgg16'):
    dists.load(backbone=trunk, weights='dists_vgg19')
  # A VGG-11 trunk, and VGG-16 in Keras's convention, are refused by name.
  features = torchvision.models.vgg11(weights=None).features.state_dict()
  torch.save({f'features.{k}': v for k, v in features.items()}, str(tmp_path / 'vgg11.pth'))
  with pytest.raises(ValueError, match="vgg11.pth is VGG-A; DISTS's trunk is VGG-16"):
    dists.load(backbone=str(tmp_path / 'vgg11.pth'), weights=wheel_weights())
  model, _, _ = pretrained.load(trunk)
  with pytest.raises(ValueError, match=r"takes RGB minus \[123.68, 116.779, 103.939\]; DISTS's"):
    perceptual.check_trunk(model, pretrained.mean_rgb_of(named_weights.KERAS_CAFFE), 'vgg16_keras',
                           'DISTS')
  with pytest.raises(ValueError, match=r"dtype='float16': DISTS's trunk runs in one of"):
    dists.load(backbone=trunk, weights=wheel_weights(), dtype='float16')


def test_weights_by_name_are_fetched_verified_and_cached(tmp_path, monkeypatch):
  """'dists_vgg16' comes from a mirror (127.0.0.1 here, or a directory), its sha256 checked,
  then from the cache; altered bytes are refused and not kept."""
  served = tmp_path / 'server'
  served.mkdir()
  entry = named_weights.DISTS_WEIGHTS['dists_vgg16']
  shutil.copy(wheel_weights(), served / entry.file_name)
  expected = dists.read_weights(wheel_weights())
  monkeypatch.setenv(named_weights.CACHE_ENV, str(tmp_path / 'cache'))
  with http_server.serve(str(served)) as (url, behaviour):
    monkeypatch.setenv(named_weights.MIRROR_ENV, url)
    got = dists.learned_weights('dists_vgg16')
    again = dists.learned_weights('dists_vgg16')
    assert behaviour.requests == [(f'/{entry.file_name}', None)]  # The second read the cache.
  path = tmp_path / 'cache' / 'dists' / entry.file_name
  assert download.digest(str(path), 'sha256') == entry.hash
  for a, b, e in zip(got, again, expected):
    np.testing.assert_array_equal(a, e)
    np.testing.assert_array_equal(b, e)
  # Offline: a mirror directory holding the wheel's weights.pt under the entry's file name.
  path.unlink()
  monkeypatch.setenv(named_weights.MIRROR_ENV, str(served))
  np.testing.assert_array_equal(dists.learned_weights('dists_vgg16')[1], expected[1])
  path.unlink()
  changed = bytearray((served / entry.file_name).read_bytes())
  changed[-100] ^= 1
  (served / entry.file_name).write_bytes(changed)
  with pytest.raises(download.DownloadError, match=f'{entry.file_name} from .* wrong bytes'):
    dists.learned_weights('dists_vgg16')
  assert not path.exists()
  (served / entry.file_name).unlink()
  monkeypatch.setenv(named_weights.MIRROR_ENV, 'http://127.0.0.1:9')  # Nothing listens.
  with pytest.raises(download.DownloadError, match=r'DISTS_pytorch/weights.pt from the '
                     r'DISTS_pytorch wheel\) and pass its path as weights'):
    dists.learned_weights('dists_vgg16')


def test_image_files_are_read_in_0_1(metric, tmp_path):
  """The command reads 8-bit images as torchvision's ToTensor does, u / 255 (its folders
  run perceptual.compare_dirs, which the LPIPS tests check, and test_command_line)."""
  dir0, dir1 = data_helpers.image_pair_folders(tmp_path)
  pair = [os.path.join(d, 'b.png') for d in (dir0, dir1)]
  from PIL import Image  # pylint: disable=g-import-not-at-top
  pixels = [np.asarray(Image.open(path), np.float32) / 255 for path in pair]
  for path, expected in zip(pair, pixels):
    np.testing.assert_array_equal(perceptual.read_image(path, dists.INPUTS.low), expected)
  got = perceptual.compare_files(metric, *pair, dists.INPUTS)
  assert got == pytest.approx(float(metric(pixels[0][None], pixels[1][None])[0]), rel=1e-6)


@pytest.mark.slow
def test_command_line(trunk, metric, tmp_path):
  """python -m vgg_jax.dists: two files print the distance; two folders write the CSV."""
  dir0, dir1 = data_helpers.image_pair_folders(tmp_path)
  flags = [f'--backbone={trunk}', f'--weights={wheel_weights()}']
  env = dict(os.environ, PYTHONPATH=ROOT)  # This checkout's vgg_jax, not an installed one.
  command = [sys.executable, '-m', 'vgg_jax.dists']
  pair = [os.path.join(d, 'a.png') for d in (dir0, dir1)]
  files = subprocess.run(command + pair + flags, capture_output=True, text=True, check=False,
                         cwd=tmp_path, env=env)
  assert files.returncode == 0, files.stderr[-3000:]
  expected = perceptual.compare_files(metric, *pair, dists.INPUTS)
  assert float(files.stdout.strip()) == pytest.approx(expected, rel=1e-5)
  folders = subprocess.run(command + [f'--dir0={dir0}', f'--dir1={dir1}'] + flags,
                           capture_output=True, text=True, check=False, cwd=tmp_path, env=env)
  assert folders.returncode == 0, folders.stderr[-3000:]
  assert 'DISTS over 3 pairs: mean' in folders.stdout and 'pairs/s' in folders.stderr
  rows = (tmp_path / 'dists.csv').read_text().splitlines()
  assert rows[0] == 'image,dists' and len(rows) == 4
