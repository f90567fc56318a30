"""vgg_jax.lpips against the `lpips` package itself: its random-trunk nets, its shipped weights."""

import copy
import os
import shutil
import subprocess
import sys
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import data_helpers  # tests/ is on sys.path
import http_server
import torch_reference
from vgg_jax import lpips
from vgg_jax import perceptual
from vgg_jax import pretrained
from vgg_jax.pretrained import download
from vgg_jax.pretrained import named_weights

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
torch = pytest.importorskip('torch', reason='the reference is PyTorch')
# lpips builds its trunk with torchvision's deprecated pretrained= argument.
pytestmark = pytest.mark.filterwarnings('ignore:.*(pretrained|weight enum).*:UserWarning')
reference_lpips = pytest.importorskip('lpips', reason='the reference package')

# Odd sides and a 16x16 (relu5_3 1x1); the fast tier runs the first two.
SHAPES = [(2, 48, 80), (3, 16, 16), pytest.param((2, 64, 64), marks=pytest.mark.slow),
          pytest.param((1, 37, 50), marks=pytest.mark.slow)]


def wheel_weights(version: str) -> str:
  """The lin weights file the installed lpips package ships."""
  return os.path.join(os.path.dirname(reference_lpips.__file__), 'weights', f'v{version}',
                      'vgg.pth')


class Pair(NamedTuple):
  reference: Any  # lpips.LPIPS (torch), random trunk.
  ours: lpips.LPIPS  # The same trunk, exported to `trunk`, and the wheel's lin weights.
  trunk: str
  version: str


@pytest.fixture(name='trunk', scope='module')
def trunk_fixture(tmp_path_factory):
  """A random VGG-16 trunk as lpips builds it (pnet_rand=True), saved in torchvision's layout."""
  torch.manual_seed(0)
  net = reference_lpips.pn.vgg16(pretrained=False, requires_grad=False)
  # Its slices hold torchvision's vgg16.features modules under their own indices.
  state = {f'features.{k.split(".", 1)[1]}': v.contiguous() for k, v in net.state_dict().items()}
  path = str(tmp_path_factory.mktemp('trunk') / 'vgg16_random.pth')
  torch.save(state, path)
  return path


def reference_on(trunk: str, **options):
  """lpips.LPIPS(net='vgg', **options) with `trunk` (a torchvision-layout file) loaded."""
  reference = reference_lpips.LPIPS(net='vgg', pnet_rand=True, verbose=False, **options)
  state = torch.load(trunk)
  reference.net.load_state_dict({f'slice{slice_of(int(k.split(".")[1]))}.{k[9:]}': v
                                 for k, v in state.items()})
  return reference


@pytest.fixture(name='pair', scope='module',
                params=['0.1', pytest.param('0.0', marks=pytest.mark.slow)])
def pair_fixture(request, trunk):
  version = request.param
  ours = lpips.load(version, backbone=trunk, lin_weights=wheel_weights(version))
  return Pair(reference_on(trunk, version=version), ours, trunk, version)


@pytest.fixture(name='baseline', scope='module')
def baseline_fixture(trunk):
  """The reference's baseline, LPIPS(lpips=False), and ours, lpips=False: no lin weights."""
  return Pair(reference_on(trunk, lpips=False), lpips.load(backbone=trunk, lpips=False), trunk,
              '0.1')


@pytest.fixture(name='metric', scope='module')
def metric_fixture(trunk):
  """Ours, version 0.1, for the tests that need no reference beside it."""
  return lpips.load('0.1', backbone=trunk, lin_weights=wheel_weights('0.1'))


def slice_of(index: int) -> int:
  """Which of lpips's vgg16 slices holds torchvision's features[index]."""
  return 1 + sum(index >= start for start in (4, 9, 16, 23))


def image_pair(shape, seed):
  """Two [-1, 1] batches: uniform noise and a noisier copy of it, clipped."""
  rng = np.random.default_rng(seed)
  x0 = rng.uniform(-1, 1, shape + (3,)).astype(np.float32)
  x1 = np.clip(x0 + rng.normal(0, 0.3, x0.shape), -1, 1).astype(np.float32)
  return x0, x1


def test_shipped_linear_weights_equal_the_reference_modules(pair):
  reference, ours = pair.reference, pair.ours
  for k, weights in enumerate(ours.lin):
    expected = reference.lins[k].model[1].weight.detach().numpy().reshape(-1)
    np.testing.assert_array_equal(np.asarray(weights), expected)
  assert all((np.asarray(w) >= 0).all() for w in ours.lin)


@pytest.mark.parametrize('shape', SHAPES)
def test_distances_and_maps_equal_the_reference(pair, shape):
  reference, ours = pair.reference, pair.ours
  x0, x1 = image_pair(shape, seed=sum(shape))
  with torch.no_grad():
    expected, layers = reference(torch_reference.nchw(x0), torch_reference.nchw(x1),
                                 retPerLayer=True)
    reference.spatial = True
    try:
      maps = reference(torch_reference.nchw(x0), torch_reference.nchw(x1))[:, 0].numpy()
    finally:
      reference.spatial = False
  got = ours(x0, x1)
  assert got.shape == (shape[0],) and got.dtype == jnp.float32
  np.testing.assert_allclose(got, expected.numpy().reshape(-1), rtol=1e-5, atol=0)
  per_layer = ours.layer_distances(x0, x1)
  for name, layer in zip(lpips.LAYERS, layers):
    np.testing.assert_allclose(per_layer[name], layer.numpy().reshape(-1), rtol=1e-5,
                               err_msg=name)
  got_maps = ours(x0, x1, spatial=True)
  assert got_maps.shape == shape
  np.testing.assert_allclose(got_maps, maps, rtol=1e-5, atol=1e-5 * np.abs(maps).max())
  # The map's mean is not the distance (upsampling weighs border pixels differently), but
  # normalize=True on [0, 1] images is the same as [-1, 1].
  np.testing.assert_allclose(ours((x0 + 1) / 2, (x1 + 1) / 2, normalize=True), got, rtol=1e-6)


@pytest.mark.parametrize('shape', SHAPES)
def test_gradients_equal_the_reference_in_float64(pair, shape):
  """The same function, differentiated: float64 on both sides leaves no ReLU or pool to
  rounding (in float32 about one activation in 10^6 lies within rounding of 0, and there
  either side of the kink is a correct gradient; test_gradients_in_float32 avoids them)."""
  x0, x1 = image_pair(shape, seed=sum(shape))
  expected = torch_reference.reference_gradients(pair.reference, x0, x1, torch.float64)
  with jax.enable_x64(True):
    ours = lpips.load(pair.version, backbone=pair.trunk, lin_weights=wheel_weights(pair.version),
                      dtype='float64')
    got = jax.grad(lambda a, b: ours(a, b).sum(), argnums=(0, 1))(
        x0.astype(np.float64), x1.astype(np.float64))
    assert got[0].dtype == jnp.float64
    # The float32 trunk folded into float64: ~1e-7 apart (measured).
    torch_reference.assert_gradients_close(got, expected, rtol=1e-4)


@pytest.mark.parametrize('shape', SHAPES)
def test_baseline_equals_the_reference(baseline, shape):
  """lpips=False: the squared differences summed over channels (no lin weights), averaged
  over positions, summed over layers, as the reference's LPIPS(lpips=False); its gradients
  in float64 too."""
  reference, ours = baseline.reference, baseline.ours
  assert not hasattr(reference, 'lins') and all((np.asarray(w) == 1).all() for w in ours.lin)
  x0, x1 = image_pair(shape, seed=sum(shape) + 1)
  with torch.no_grad():
    expected, layers = reference(torch_reference.nchw(x0), torch_reference.nchw(x1),
                                 retPerLayer=True)
  np.testing.assert_allclose(ours(x0, x1), expected.numpy().reshape(-1), rtol=1e-5, atol=0)
  np.testing.assert_allclose(ours.layer_distances(x0, x1)['relu5_3'],
                             layers[-1].numpy().reshape(-1), rtol=1e-5)
  expected_grads = torch_reference.reference_gradients(reference, x0, x1, torch.float64)
  with jax.enable_x64(True):
    ours64 = lpips.load(backbone=baseline.trunk, dtype='float64', lpips=False)
    got = jax.grad(lambda a, b: ours64(a, b).sum(), argnums=(0, 1))(
        x0.astype(np.float64), x1.astype(np.float64))
    torch_reference.assert_gradients_close(got, expected_grads, rtol=1e-4)
  with pytest.raises(ValueError, match=r"lin_weights='x.pth' with lpips=False: the baseline"):
    lpips.load(backbone=baseline.trunk, lin_weights='x.pth', lpips=False)


def kink_margin(reference, x0, x1) -> float:
  """How near the pair's activations come to a kink, relative to each layer's largest value:
  the least |input| of any ReLU and the least gap between a positive 2x2 window's top two
  values, computed by the reference in float64."""
  net, found = copy.deepcopy(reference.net).double(), []

  def relu(module, inputs):
    del module
    found.append(float(inputs[0].abs().min() / inputs[0].abs().max()))

  def pool(module, inputs):
    del module
    v = inputs[0]
    b, c, h, w = v.shape
    windows = v[:, :, :h // 2 * 2, :w // 2 * 2].reshape(b, c, h // 2, 2, w // 2, 2)
    top = windows.permute(0, 1, 2, 4, 3, 5).reshape(b, c, h // 2, w // 2, 4).topk(2).values
    gaps = (top[..., 0] - top[..., 1])[top[..., 0] > 0]
    found.append(float(gaps.min() / v.abs().max()))

  for module in net.modules():
    if isinstance(module, (torch.nn.ReLU, torch.nn.MaxPool2d)):
      module.register_forward_pre_hook(relu if isinstance(module, torch.nn.ReLU) else pool)
  x = torch.cat([torch_reference.nchw(x0, torch.float64), torch_reference.nchw(x1, torch.float64)])
  with torch.no_grad():
    net(reference.scaling_layer.double()(x) if reference.version == '0.1' else x)
  return min(found)


def test_gradients_in_float32(pair):
  """Our float32 gradients equal the reference's float32 ones where no kink is near: the
  pair's every activation is >= 5e-6 of its layer's scale from a kink, five times float32's
  rounding differences between the two (measured <= 1e-6). The seed is the first of 0..63
  that keeps that margin (searching them took 15 s a version, so it is written here and
  its margin checked)."""
  shape = (1, 16, 16)
  seed = {'0.1': 28, '0.0': 56}[pair.version]
  assert kink_margin(pair.reference, *image_pair(shape, seed)) >= 5e-6
  x0, x1 = image_pair(shape, seed)
  expected = torch_reference.reference_gradients(pair.reference, x0, x1, torch.float32)
  got = jax.jit(jax.grad(lambda m, a, b: m(a, b).sum(), argnums=(1, 2)))(pair.ours, x0, x1)
  torch_reference.assert_gradients_close(got, expected, rtol=1e-4)


@pytest.mark.slow  # Compiles VGG-16 in bfloat16, forward and backward.
def test_jit_bfloat16_and_pytree(pair):
  x0, x1 = image_pair((2, 32, 48), seed=5)
  eager = pair.ours(x0, x1)
  jitted = jax.jit(lambda m, a, b: m(a, b))(pair.ours, x0, x1)
  np.testing.assert_allclose(jitted, eager, rtol=1e-6)
  half = lpips.load(pair.version, backbone=pair.trunk, lin_weights=wheel_weights(pair.version),
                    dtype='bfloat16')
  assert half.trunk.dtype == jnp.bfloat16
  got = half(x0, x1)
  assert got.dtype == jnp.float32  # Activations bfloat16, the sums float32.
  np.testing.assert_allclose(got, eager, rtol=5e-2)
  grads = jax.grad(lambda a: half(a, x1).sum())(x0)
  assert grads.dtype == jnp.float32 and np.isfinite(np.asarray(grads)).all()


def test_bad_images_get_clear_errors(metric):
  x0, x1 = image_pair((1, 32, 32), seed=0)
  with pytest.raises(ValueError, match=r'x1 has values in \[-1, 1.5\].*normalize=True'):
    metric(x0, np.where(x1 > 0.9, 1.5, x1))
  with pytest.raises(ValueError, match=r'x0 has values in \[0, 255\]; LPIPS takes images in '
                     r'\[0, 1\]\.'):
    metric(np.where(x0 > 0, 255.0, 0.0).astype(np.float32), x1, normalize=True)
  with pytest.raises(ValueError, match=r'x0 has values in \[nan'):
    metric(np.full_like(x0, np.nan), x1)
  with pytest.raises(ValueError, match=r'differ in shape, \(1, 32, 32, 3\) and \(1, 32, 40, 3\)'):
    metric(x0, np.zeros((1, 32, 40, 3), np.float32))
  with pytest.raises(ValueError, match=r'x1 has shape \(32, 32, 3\); LPIPS takes RGB batches'):
    metric(x0, x1[0])
  with pytest.raises(ValueError, match='x0 is uint8; LPIPS takes float images'):
    metric(np.zeros((1, 32, 32, 3), np.uint8), x1)
  with pytest.raises(ValueError, match='at least 16x16.*got 8x32'):
    metric(x0[:, :8], x1[:, :8])
  # Inside jit and grad the values are unknown: only shapes are checked there.
  with pytest.raises(ValueError, match='differ in shape'):
    jax.jit(lambda a: metric(a, x1[:, :16]))(x0)


def test_bad_weights_get_clear_errors(trunk, metric, tmp_path):
  state = {f'lin{k}.model.1.weight': torch.ones(1, c, 1, 1)
           for k, c in enumerate(lpips.CHANNELS)}
  state['lin2.model.1.weight'][0, 7] = -0.5
  torch.save(state, str(tmp_path / 'negative.pth'))
  with pytest.raises(ValueError, match=r'lin2.model.1.weight has negative \(or NaN\) weights \(least -0.5'):
    lpips.read_linear_weights(str(tmp_path / 'negative.pth'))
  state['lin2.model.1.weight'][0, 7] = 0.5
  del state['lin4.model.1.weight']
  torch.save(state, str(tmp_path / 'short.pth'))
  with pytest.raises(ValueError, match=r'no lin4.model.1.weight \(relu5_3\): not an LPIPS VGG'):
    lpips.read_linear_weights(str(tmp_path / 'short.pth'))
  with pytest.raises(ValueError, match=r"LPIPS version '0.2' is not one of \('0.1', '0.0'\)"):
    lpips.load('0.2', backbone=trunk)
  with pytest.raises(ValueError, match="'lpips_vgg_v9' is no .*known names: lpips_vgg_v0.1"):
    lpips.load('0.1', backbone=trunk, lin_weights='lpips_vgg_v9')
  # A VGG-11 trunk, and VGG-16 in Keras's convention (BGR, caffe means), are refused.
  torchvision = pytest.importorskip('torchvision', reason='builds a VGG-11')
  features = torchvision.models.vgg11(weights=None).features.state_dict()
  torch.save({f'features.{k}': v for k, v in features.items()}, str(tmp_path / 'vgg11.pth'))
  with pytest.raises(ValueError, match="vgg11.pth is VGG-A; LPIPS's trunk is VGG-16"):
    lpips.load('0.1', backbone=str(tmp_path / 'vgg11.pth'))
  model, _, _ = pretrained.load(trunk)
  keras_mean = pretrained.mean_rgb_of(named_weights.KERAS_CAFFE)
  with pytest.raises(ValueError, match=r"takes RGB minus \[123.68, 116.779, 103.939\]; LPIPS's"):
    perceptual.check_trunk(model, keras_mean, 'vgg16_keras', 'LPIPS')
  perceptual.check_trunk(model, pretrained.mean_rgb_of(named_weights.TORCH_IMAGENET), 'ok')
  assert 'fc6' not in metric.variables['params'] and len(metric.variables['params']) == 13


def test_linear_weights_by_name_are_fetched_verified_and_cached(tmp_path, monkeypatch):
  """The named file comes from a mirror (127.0.0.1 here), its sha256 checked, then the cache."""
  served = tmp_path / 'server'
  served.mkdir()
  entry = named_weights.LPIPS_WEIGHTS['lpips_vgg_v0.1']
  shutil.copy(wheel_weights('0.1'), served / entry.file_name)
  monkeypatch.setenv(named_weights.CACHE_ENV, str(tmp_path / 'cache'))
  with http_server.serve(str(served)) as (url, behaviour):
    monkeypatch.setenv(named_weights.MIRROR_ENV, url)
    got = lpips.linear_weights('lpips_vgg_v0.1')
    assert behaviour.requests == [(f'/{entry.file_name}', None)]
    again = lpips.linear_weights('lpips_vgg_v0.1')
    assert len(behaviour.requests) == 1  # The second load read the cache.
  path = str(tmp_path / 'cache' / 'lpips' / entry.file_name)
  assert download.digest(path, 'sha256') == entry.hash and os.path.getsize(path) == entry.size_bytes
  for a, b, expected in zip(got, again, lpips.read_linear_weights(wheel_weights('0.1'))):
    np.testing.assert_array_equal(a, expected)
    np.testing.assert_array_equal(b, expected)
  # The cached copy is checked at every use: changed bytes are deleted and fetched again.
  with open(path, 'r+b') as f:
    f.seek(100)
    f.write(b'\xff')
  with http_server.serve(str(served)) as (url, behaviour):
    monkeypatch.setenv(named_weights.MIRROR_ENV, url)
    for a, expected in zip(lpips.linear_weights('lpips_vgg_v0.1'), got):
      np.testing.assert_array_equal(a, expected)
    assert behaviour.requests == [(f'/{entry.file_name}', None)]
  # The v0.0 entry names the wheel's other file; wrong bytes are refused and not kept.
  old = named_weights.LPIPS_WEIGHTS['lpips_vgg_v0.0']
  assert download.digest(wheel_weights('0.0'), 'sha256') == old.hash
  assert old.url.endswith('/lpips/weights/v0.0/vgg.pth') and entry.url.endswith('v0.1/vgg.pth')
  shutil.copy(wheel_weights('0.1'), served / old.file_name)  # Larger than v0.0's file.
  with http_server.serve(str(served)) as (url, _):
    monkeypatch.setenv(named_weights.MIRROR_ENV, url)
    with pytest.raises(download.DownloadError, match='has at most 6,735: refused before reading'):
      lpips.linear_weights('lpips_vgg_v0.0')
    changed = bytearray(open(wheel_weights('0.0'), 'rb').read())
    changed[100] ^= 1
    (served / old.file_name).write_bytes(changed)
    with pytest.raises(download.DownloadError, match=f'{old.file_name} from .* wrong bytes'):
      lpips.linear_weights('lpips_vgg_v0.0')
  assert not os.path.exists(tmp_path / 'cache' / 'lpips' / old.file_name)


def test_folders_are_compared_by_name_in_batches(metric, tmp_path, caplog):
  dir0, dir1 = data_helpers.image_pair_folders(tmp_path)
  caplog.set_level('INFO')
  got = perceptual.compare_dirs(metric, dir0, dir1, lpips.INPUTS, batch_size=2)
  assert list(got) == ['a.png', 'b.png', 'c.png']
  assert '1 image(s) only in' in caplog.text and 'only_here.png' in caplog.text
  assert 'LPIPS: 3/3 pairs read, 3 compared' in caplog.text
  # a and c (32x40) made one batch; b (24x24) was padded to two with itself.
  read = {n: [perceptual.read_image(os.path.join(d, n), -1.0) for d in (dir0, dir1)]
          for n in got}
  assert read['a.png'][0].shape == (32, 40, 3) and read['a.png'][0].min() >= -1
  pair_ac = metric(*(np.stack([read['a.png'][i], read['c.png'][i]]) for i in (0, 1)))
  pair_bb = metric(*(np.stack([read['b.png'][i]] * 2) for i in (0, 1)))
  np.testing.assert_allclose([got['a.png'], got['c.png'], got['b.png']],
                             [*np.asarray(pair_ac), float(pair_bb[0])], rtol=1e-6)
  perceptual.write_csv(str(tmp_path / 'out.csv'), got, 'lpips')
  rows = (tmp_path / 'out.csv').read_text().splitlines()
  assert rows[0] == 'image,lpips' and [r.split(',')[0] for r in rows[1:]] == list(got)
  np.testing.assert_allclose([float(r.split(',')[1]) for r in rows[1:]], list(got.values()),
                             rtol=1e-6)
  from PIL import Image  # pylint: disable=g-import-not-at-top
  Image.fromarray(np.zeros((24, 30, 3), np.uint8)).save(os.path.join(dir1, 'b.png'))
  with pytest.raises(ValueError, match=r'dir0/b.png is 24x24 but .*dir1/b.png is 30x24'):
    perceptual.compare_dirs(metric, dir0, dir1, lpips.INPUTS)
  with pytest.raises(ValueError, match='have no image file names in common'):
    perceptual.compare_dirs(metric, dir0, str(tmp_path), lpips.INPUTS)


@pytest.mark.slow
def test_command_line(trunk, metric, tmp_path):
  """python -m vgg_jax.lpips: two files print the distance; two folders write the CSV."""
  dir0, dir1 = data_helpers.image_pair_folders(tmp_path)
  flags = [f'--backbone={trunk}', f'--lin_weights={wheel_weights("0.1")}']
  env = dict(os.environ, PYTHONPATH=ROOT)  # This checkout's vgg_jax, not an installed one.

  def run(*args):
    return subprocess.run([sys.executable, '-m', 'vgg_jax.lpips', *args, *flags],
                          capture_output=True, text=True, check=False, cwd=tmp_path, env=env)

  files = run(os.path.join(dir0, 'a.png'), os.path.join(dir1, 'a.png'))
  assert files.returncode == 0, files.stderr[-3000:]
  expected = perceptual.compare_files(metric, os.path.join(dir0, 'a.png'),
                                      os.path.join(dir1, 'a.png'), lpips.INPUTS)
  assert float(files.stdout.strip()) == pytest.approx(expected, rel=1e-5)
  folders = run(f'--dir0={dir0}', f'--dir1={dir1}', '--csv=d.csv')
  assert folders.returncode == 0, folders.stderr[-3000:]
  assert 'over 3 pairs: mean' in folders.stdout and 'pairs/s' in folders.stderr
  assert len((tmp_path / 'd.csv').read_text().splitlines()) == 4
  usage = run(os.path.join(dir0, 'a.png'))
  assert usage.returncode != 0 and 'Give two image files, or --dir0 and --dir1' in usage.stderr
