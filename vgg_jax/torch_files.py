"""Reads PyTorch .pth state dicts into numpy without torch, and without running their code.

Both of torch.save's formats: the zip archive (torch >= 1.6: <name>/data.pkl and one
<name>/data/<key> file per storage) and the legacy stream (a magic number, the pickle,
the storage keys, then each storage's bytes behind an int64 element count), which
torchvision's 2017 VGG files use. The pickle is read by an unpickler that knows only
dicts, tensors and storages: any other global in the file is refused by name, so a
hostile file cannot run code (what torch.load(weights_only=True) guarantees). Storages
saved on a GPU are read the same way: their location is ignored.
"""

import collections
import io
import pickle
import struct
import zipfile

import ml_dtypes
import numpy as np

LEGACY_MAGIC = 0x1950a86a20f9469cfc6c  # torch.serialization.MAGIC_NUMBER.
STORAGE_DTYPES = {
    'FloatStorage': np.float32, 'DoubleStorage': np.float64, 'HalfStorage': np.float16,
    'BFloat16Storage': ml_dtypes.bfloat16, 'LongStorage': np.int64, 'IntStorage': np.int32,
    'ShortStorage': np.int16, 'CharStorage': np.int8, 'ByteStorage': np.uint8,
    'BoolStorage': np.bool_,
}
Storage = collections.namedtuple('Storage', 'dtype key view')  # view: (offset, count) or None.
Tensor = collections.namedtuple('Tensor', 'storage offset shape strides')


def _rebuild_tensor(storage, offset, shape, strides, *unused):
  return Tensor(storage, offset, tuple(shape), tuple(strides))


class _Unpickler(pickle.Unpickler):
  """Builds Tensor placeholders; refuses every global but dicts, storages and tensors."""

  def find_class(self, module, name):
    if (module, name) == ('collections', 'OrderedDict'):
      return collections.OrderedDict
    if module == 'torch._utils' and name in ('_rebuild_tensor', '_rebuild_tensor_v2'):
      return _rebuild_tensor
    if module == 'torch' and name in STORAGE_DTYPES:
      return name
    raise pickle.UnpicklingError(f'{module}.{name} is not a tensor, storage or dict: '
                                 'refused (a state dict holds nothing else)')

  def __init__(self, file):
    super().__init__(file)
    self.storage_dtypes = {}  # key -> dtype of every storage the pickle names.

  def persistent_load(self, pid):
    # ('storage', type, key, location, numel) in zip files; legacy adds view_metadata.
    if pid[0] != 'storage' or pid[1] not in STORAGE_DTYPES:
      raise pickle.UnpicklingError(f'unknown persistent id {pid[:2]!r}')
    self.storage_dtypes[str(pid[2])] = STORAGE_DTYPES[pid[1]]
    view = pid[5] if len(pid) > 5 else None
    if view is not None:  # (view_key, offset, size) of the root storage pid[2].
      return Storage(STORAGE_DTYPES[pid[1]], str(pid[2]), (view[1], view[2]))
    return Storage(STORAGE_DTYPES[pid[1]], str(pid[2]), None)


def _materialise(tree, buffers: dict[str, np.ndarray]):
  """Tensor placeholders -> numpy arrays (copies) over the storages' flat buffers."""
  if isinstance(tree, dict):
    return {k: _materialise(v, buffers) for k, v in tree.items()}
  if not isinstance(tree, Tensor):
    return tree
  flat = buffers[tree.storage.key].view(tree.storage.dtype)
  if tree.storage.view is not None:
    start, count = tree.storage.view
    flat = flat[start:start + count]
  itemsize = flat.dtype.itemsize
  return np.lib.stride_tricks.as_strided(
      flat[tree.offset:], tree.shape, [s * itemsize for s in tree.strides]).copy()


def _read_zip(path: str):
  with zipfile.ZipFile(path) as archive:
    names = archive.namelist()
    pickles = [n for n in names if n.endswith('/data.pkl') or n == 'data.pkl']
    if not pickles:
      raise ValueError(f'{path} is a zip file but not a torch.save archive (no data.pkl).')
    root = pickles[0][:-len('data.pkl')]
    tree = _Unpickler(io.BytesIO(archive.read(pickles[0]))).load()
    keys = {n[len(root) + 5:] for n in names if n.startswith(root + 'data/')}
    buffers = {k: np.frombuffer(archive.read(f'{root}data/{k}'), np.uint8) for k in keys}
  return tree, buffers


def _read_legacy(path: str):
  with open(path, 'rb') as f:
    try:
      magic = pickle.load(f)
    except Exception as error:  # pylint: disable=broad-except
      raise ValueError(f'{path} is not a torch.save file (neither a zip archive nor the legacy '
                       f'format; truncated or corrupt?): {error}') from error
    if magic != LEGACY_MAGIC:
      raise ValueError(f'{path} is not a torch.save file (no zip archive, no magic number).')
    pickle.load(f)  # Protocol version.
    pickle.load(f)  # System info (byte order: little endian, as every file we read).
    unpickler = _Unpickler(f)
    tree = unpickler.load()
    buffers = {}
    for key in pickle.load(f):
      dtype = np.dtype(unpickler.storage_dtypes.get(str(key), np.uint8))
      (count,) = struct.unpack('<q', f.read(8))
      data = f.read(count * dtype.itemsize)
      if len(data) != count * dtype.itemsize:
        raise ValueError(f'{path} ends inside storage {key} (truncated?).')
      buffers[str(key)] = np.frombuffer(data, np.uint8)
  return tree, buffers


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """name -> numpy array of a .pth file saved by torch.save(state_dict)."""
  try:
    tree, buffers = _read_zip(path) if zipfile.is_zipfile(path) else _read_legacy(path)
    state = _materialise(tree, buffers)
  except (pickle.UnpicklingError, EOFError, KeyError, zipfile.BadZipFile, struct.error) as error:
    raise ValueError(f'{path} is not a readable torch state dict: {error}') from error
  if isinstance(state, dict) and 'state_dict' in state and isinstance(state['state_dict'], dict):
    state = state['state_dict']  # A training checkpoint that wraps its weights.
  return {k: v for k, v in state.items() if isinstance(v, np.ndarray)}
