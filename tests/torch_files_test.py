"""Tests for vgg_jax.pretrained.torch_files: .pth files read without torch equal torch.load's tensors."""

import os

import numpy as np
import pytest

from vgg_jax.pretrained import torch_files
from vgg_jax.pretrained import untrusted


@pytest.fixture(name='torch', scope='module')
def torch_fixture():
  return pytest.importorskip('torch', reason='writes .pth files to compare with')


@pytest.mark.parametrize('zip_format', [True, False], ids=['zip', 'legacy'])
def test_reads_what_torch_saved(torch, tmp_path, zip_format):
  torch.manual_seed(0)
  state = {'features.0.weight': torch.randn(8, 3, 3, 3), 'features.0.bias': torch.randn(8),
           'transposed': torch.randn(4, 6).t(), 'slice': torch.arange(10.0)[3:7],
           'half': torch.randn(3, 2).half(), 'steps': torch.tensor(7),
           'bfloat16': torch.randn(5).bfloat16()}
  path = tmp_path / 'state.pth'
  torch.save(state, path, _use_new_zipfile_serialization=zip_format)
  got = torch_files.read_state_dict(str(path))
  assert list(got) == list(state)
  for name, tensor in state.items():
    expected = tensor.float().numpy() if name == 'bfloat16' else tensor.numpy()
    assert got[name].shape == expected.shape, name
    np.testing.assert_array_equal(got[name].astype(expected.dtype), expected, err_msg=name)
    if name != 'bfloat16':
      assert got[name].dtype == expected.dtype


class Hostile:
  def __reduce__(self):
    return (os.system, ('echo this must not run',))


def test_refuses_anything_but_tensors_and_names_it(torch, tmp_path):
  path = tmp_path / 'hostile.pth'
  torch.save({'weight': torch.zeros(2), 'payload': Hostile()}, path)
  with pytest.raises(untrusted.WeightsFileError,
                     match='hostile.pth: its state dict names posix.system, which is not a tensor'):
    torch_files.read_state_dict(str(path))


def test_truncated_and_foreign_files_are_named(torch, tmp_path):
  path = tmp_path / 'state.pth'
  torch.save({'w': torch.randn(1000)}, path, _use_new_zipfile_serialization=False)
  cut = tmp_path / 'cut.pth'
  cut.write_bytes(path.read_bytes()[:2000])
  with pytest.raises(ValueError, match='cut.pth ends inside storage'):
    torch_files.read_state_dict(str(cut))
  other = tmp_path / 'other.pth'
  other.write_bytes(b'not a torch file at all')
  with pytest.raises(ValueError, match='other.pth is not a torch.save file'):
    torch_files.read_state_dict(str(other))
