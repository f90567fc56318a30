"""Reads PyTorch .pth state dicts into numpy without torch, treating the file as hostile.

Both of torch.save's formats: the zip archive (torch >= 1.6: <name>/data.pkl and one
<name>/data/<key> entry per storage) and the legacy stream (pickles of the magic number,
the protocol, the system info, the state dict and the storage keys, then each storage's
bytes behind an int64 element count), which torchvision's 2017 VGG files use. Every rule
is checked before memory is spent on what it guards (docs/security.md):
- Every pickle of the file, in every position, is at most MAX_PICKLE_BYTES, uses only
  the opcodes a state dict needs (no sets, extensions or object construction) and memo
  indices no larger than its size, and is read
  by an unpickler that knows only dicts, tensors and storages. Any other global is
  refused by name, so no code in the file runs (what torch.load(weights_only=True)
  promises).
- A storage is read only when the pickle names it, and only the bytes its element count
  declares. A zip entry that holds more, or archive-wide storages inflating past
  MAX_INFLATION times the file, is refused.
- Each tensor's offset, shape and strides are checked to lie inside its storage before
  the view is made. A tensor never has more elements than its storage (no zero-stride
  expansion), and all tensors together hold at most twice the storages' bytes (shared
  storages, as tied weights have).
Every refusal is an untrusted.WeightsFileError naming the file. Storages saved on a GPU
are read the same way: their location is ignored.
"""

import collections
import io
import math
import os
import pickle
import pickletools
import struct
import zipfile

import ml_dtypes
import numpy as np

from vgg_jax.pretrained import untrusted

LEGACY_MAGIC = 0x1950a86a20f9469cfc6c  # torch.serialization.MAGIC_NUMBER.
STORAGE_DTYPES = {
    'FloatStorage': np.float32, 'DoubleStorage': np.float64, 'HalfStorage': np.float16,
    'BFloat16Storage': ml_dtypes.bfloat16, 'LongStorage': np.int64, 'IntStorage': np.int32,
    'ShortStorage': np.int16, 'CharStorage': np.int8, 'ByteStorage': np.uint8,
    'BoolStorage': np.bool_,
}
MAX_PICKLE_BYTES = 2 << 20  # A state dict's pickle is ~100 bytes a tensor.
MAX_INFLATION = 64  # zip: storage bytes per byte of the archive (+ INFLATION_SLACK).
INFLATION_SLACK = 1 << 20
MAX_DIMS = 32
# The opcodes of torch.save's pickles (protocol 2; 4 and 5 add framing and memoize).
OPCODES = frozenset((
    'PROTO', 'FRAME', 'STOP', 'MARK', 'POP', 'POP_MARK', 'DUP', 'EMPTY_DICT', 'DICT',
    'SETITEM', 'SETITEMS', 'EMPTY_LIST', 'LIST', 'APPEND', 'APPENDS', 'EMPTY_TUPLE', 'TUPLE',
    'TUPLE1', 'TUPLE2', 'TUPLE3', 'NONE', 'NEWTRUE', 'NEWFALSE', 'INT', 'BININT', 'BININT1',
    'BININT2', 'LONG', 'LONG1', 'LONG4', 'FLOAT', 'BINFLOAT', 'UNICODE', 'BINUNICODE',
    'SHORT_BINUNICODE', 'BINUNICODE8', 'STRING', 'BINSTRING', 'SHORT_BINSTRING', 'BINBYTES',
    'SHORT_BINBYTES', 'BINBYTES8', 'GLOBAL', 'STACK_GLOBAL', 'REDUCE', 'BUILD', 'PERSID',
    'BINPERSID', 'PUT', 'BINPUT', 'LONG_BINPUT', 'MEMOIZE', 'GET', 'BINGET', 'LONG_BINGET'))
MEMO_OPCODES = frozenset(('PUT', 'BINPUT', 'LONG_BINPUT', 'GET', 'BINGET', 'LONG_BINGET'))
Storage = collections.namedtuple('Storage', 'dtype key view')  # view: (offset, count) or None.
Tensor = collections.namedtuple('Tensor', 'storage offset shape strides')


def _rebuild_tensor(storage, offset, shape, strides, *unused):
  return Tensor(storage, offset, shape, strides)


def _rebuild_parameter(data, *unused):  # An nn.Parameter: its tensor.
  return data


class _Unpickler(pickle.Unpickler):
  """Knows no global and no persistent id: the file's other pickles hold plain values."""

  what = 'pickle'

  def find_class(self, module, name):
    raise pickle.UnpicklingError(
        f'its {self.what} names {untrusted.short(module)}.{untrusted.short(name)}, which is '
        'not a tensor, storage or dict: refused (a state dict holds nothing else)')

  def persistent_load(self, pid):
    raise pickle.UnpicklingError(f'its {self.what} holds a persistent id: refused')


class _StateDictUnpickler(_Unpickler):
  """Builds Tensor placeholders; refuses every global but dicts, storages and tensors."""

  what = 'state dict'

  def __init__(self, file):
    super().__init__(file)
    self.storages = {}  # key -> (dtype, element count) of every storage the pickle names.

  def find_class(self, module, name):
    if (module, name) == ('collections', 'OrderedDict'):
      return collections.OrderedDict
    if module == 'torch._utils' and name in ('_rebuild_tensor', '_rebuild_tensor_v2'):
      return _rebuild_tensor
    if (module, name) == ('torch._utils', '_rebuild_parameter'):
      return _rebuild_parameter
    if module == 'torch' and name in STORAGE_DTYPES:
      return name
    return super().find_class(module, name)

  def persistent_load(self, pid):
    # ('storage', type, key, location, numel) in zip files; legacy adds view_metadata.
    if (not isinstance(pid, tuple) or len(pid) not in (5, 6) or pid[0] != 'storage'
        or not isinstance(pid[1], str) or pid[1] not in STORAGE_DTYPES):
      raise pickle.UnpicklingError('a persistent id is not a storage of a known type')
    dtype, key, numel = STORAGE_DTYPES[pid[1]], _key(pid[2]), _count(pid[4], 'storage size')
    if self.storages.setdefault(key, (dtype, numel)) != (dtype, numel):
      raise pickle.UnpicklingError(f'storage {untrusted.short(key)} is named with two types '
                                   'or sizes')
    view = pid[5] if len(pid) > 5 else None
    if view is None:
      return Storage(dtype, key, None)
    if not isinstance(view, tuple) or len(view) != 3:
      raise pickle.UnpicklingError(f'storage {untrusted.short(key)} has a malformed view')
    start, count = _count(view[1], 'view offset'), _count(view[2], 'view size')
    if start + count > numel:
      raise pickle.UnpicklingError(f'a view of storage {untrusted.short(key)} ends at element '
                                   f'{start + count:,}, past its {numel:,}')
    return Storage(dtype, key, (start, count))


def _key(key) -> str:
  if isinstance(key, bool) or not isinstance(key, (str, int)):
    raise pickle.UnpicklingError('a storage key is not a string')
  return untrusted.short(str(key))


def _count(value, what: str) -> int:
  if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**48:
    raise pickle.UnpicklingError(f'a {what} is not a count (an int in [0, 2**48))')
  return value


def _unpickle(buffer: bytes, start: int, unpickler_class, what: str):
  """(object, unpickler, end) of the pickle at buffer[start:], checked before it is run."""
  window = buffer[start:start + MAX_PICKLE_BYTES]
  end = None
  try:
    for opcode, argument, position in pickletools.genops(window):
      if opcode.name not in OPCODES:
        raise pickle.UnpicklingError(f'its {what} uses opcode {opcode.name}, which a state '
                                     'dict never needs: refused')
      # The unpickler sizes its memo to the largest index: a pickler numbers them from 0,
      # one per opcode at most, so an index past the position is a memory bomb.
      if opcode.name in MEMO_OPCODES and int(argument) > position:
        raise pickle.UnpicklingError(f'its {what} uses memo index {int(argument):,} at byte '
                                     f'{position:,}: refused')
      if opcode.name == 'STOP':
        end = position + 1
        break
  except ValueError as error:  # Malformed, or no STOP within the window.
    limit = (f' (a pickle is at most {MAX_PICKLE_BYTES:,} bytes)'
             if len(window) == MAX_PICKLE_BYTES else '')
    raise pickle.UnpicklingError(f'its {what} is truncated or malformed{limit}: '
                                 f'{untrusted.short(str(error))}') from None
  unpickler = unpickler_class(io.BytesIO(window[:end]))
  return unpickler.load(), unpickler, start + end


def _read_legacy(f, path: str, size: int):
  """(state dict tree, {key: flat uint8 buffer}) of the legacy stream."""
  head = f.read(min(size, 5 * MAX_PICKLE_BYTES))
  try:
    magic, _, end = _unpickle(head, 0, _Unpickler, 'magic number')
  except pickle.UnpicklingError as error:
    raise untrusted.WeightsFileError(
        f'{path} is not a torch.save file (neither a zip archive nor the legacy format; '
        f'truncated or corrupt?): {error}.') from None
  if magic != LEGACY_MAGIC:
    raise untrusted.WeightsFileError(f'{path} is not a torch.save file (no zip archive, no '
                                     'magic number).')
  _, _, end = _unpickle(head, end, _Unpickler, 'protocol version')
  info, _, end = _unpickle(head, end, _Unpickler, 'system info')
  if not isinstance(info, dict) or info.get('little_endian') is not True:
    raise untrusted.WeightsFileError(f'{path} was saved big-endian (or says nothing of its '
                                     'byte order): only little-endian files are read.')
  tree, unpickler, end = _unpickle(head, end, _StateDictUnpickler, 'state dict')
  keys, _, end = _unpickle(head, end, _Unpickler, 'storage keys')
  if not isinstance(keys, list) or len(keys) != len(unpickler.storages):
    raise untrusted.WeightsFileError(f'{path} lists other storages than its state dict '
                                     'names.')
  f.seek(end)
  buffers = {}
  for key in keys:
    key = _key(key)
    if key not in unpickler.storages or key in buffers:
      raise untrusted.WeightsFileError(f'{path} holds storage {key}, which its state dict '
                                       'does not name (or names twice).')
    dtype, numel = unpickler.storages[key]
    count_bytes = f.read(8)
    if len(count_bytes) != 8:
      raise untrusted.WeightsFileError(f'{path} ends inside storage {key} (truncated?).')
    (count,) = struct.unpack('<q', count_bytes)
    nbytes = count * np.dtype(dtype).itemsize
    if count != numel:
      raise untrusted.WeightsFileError(f'{path}: storage {key} holds {count:,} elements but '
                                       f'the state dict declares {numel:,}.')
    if nbytes > size - f.tell():
      raise untrusted.WeightsFileError(f'{path} ends inside storage {key} (truncated?): it '
                                       f'needs {nbytes:,} bytes, {size - f.tell():,} remain.')
    buffers[key] = np.frombuffer(f.read(nbytes), np.uint8)
  return tree, unpickler.storages, buffers


def _read_zip(f, path: str, size: int):
  """(state dict tree, {key: flat uint8 buffer}) of the zip archive."""
  archive = zipfile.ZipFile(f)
  infos = {info.filename: info for info in archive.infolist()}
  pickles = [n for n in infos if n.endswith('/data.pkl') or n == 'data.pkl']
  if not pickles:
    raise untrusted.WeightsFileError(f'{path} is a zip file but not a torch.save archive (no '
                                     'data.pkl).')
  root = pickles[0][:-len('data.pkl')]
  order = infos.get(root + 'byteorder')
  if order is not None and _read_entry(archive, order, 16, path) != b'little':
    raise untrusted.WeightsFileError(f'{path} was saved big-endian: only little-endian files '
                                     'are read.')
  data = _read_entry(archive, infos[pickles[0]], MAX_PICKLE_BYTES, path)
  tree, unpickler, _ = _unpickle(data, 0, _StateDictUnpickler, 'state dict')
  budget, buffers = MAX_INFLATION * size + INFLATION_SLACK, {}
  for key, (dtype, numel) in unpickler.storages.items():
    info = infos.get(f'{root}data/{key}')
    if info is None:
      raise untrusted.WeightsFileError(f'{path} lacks storage {key}, which its state dict '
                                       'names.')
    nbytes = numel * np.dtype(dtype).itemsize
    if info.file_size != nbytes:
      raise untrusted.WeightsFileError(f'{path}: storage {key} holds {info.file_size:,} '
                                       f'bytes but the state dict declares {nbytes:,}.')
    budget -= nbytes
    if budget < 0:
      raise untrusted.WeightsFileError(
          f'{path}: its storages inflate past {MAX_INFLATION} times the file ({size:,} '
          f'bytes) at storage {key} ({nbytes:,} bytes): refused as a zip bomb.')
    buffers[key] = np.frombuffer(_read_entry(archive, info, nbytes, path), np.uint8)
  return tree, unpickler.storages, buffers


def _read_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int, path: str):
  """The entry's bytes, at most `limit` of them: a larger entry is refused unread."""
  if info.file_size > limit:
    raise untrusted.WeightsFileError(f'{path}: entry {untrusted.short(info.filename)} holds '
                                     f'{info.file_size:,} bytes, over the {limit:,} allowed.')
  with archive.open(info) as entry:
    data = entry.read(limit + 1)
  if len(data) != info.file_size:
    raise untrusted.WeightsFileError(f'{path}: entry {untrusted.short(info.filename)} is not '
                                     'the size its directory says (truncated or corrupt).')
  return data


def _state_tensors(tree, path: str) -> dict[str, Tensor]:
  """name -> Tensor of the state dict (or of a checkpoint's 'state_dict'); others dropped."""
  if not isinstance(tree, dict):
    raise untrusted.WeightsFileError(f'{path} holds a {type(tree).__name__}, not a state dict.')
  inner = tree.get('state_dict')
  if isinstance(inner, dict):  # A training checkpoint that wraps its weights.
    tree = inner
  return {k: v for k, v in tree.items() if isinstance(k, str) and isinstance(v, Tensor)}


def _check_view(tensor: Tensor, storages, name: str, path: str) -> int:
  """The tensor's element count, once its view is known to lie inside its storage."""
  bad = lambda what: untrusted.WeightsFileError(  # pylint: disable=unnecessary-lambda-assignment
      f'{path}: tensor {untrusted.short(name)} {what}: refused.')
  if not isinstance(tensor.storage, Storage):
    raise bad('has no storage')
  shape, strides, offset = tensor.shape, tensor.strides, tensor.offset
  if not (isinstance(shape, tuple) and isinstance(strides, tuple)
          and len(shape) == len(strides) <= MAX_DIMS):
    raise bad(f'has a malformed shape or strides (at most {MAX_DIMS} dimensions)')
  ints = (offset,) + shape + strides
  if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in ints):
    raise bad('has a negative or non-integer offset, size or stride')
  length = (tensor.storage.view[1] if tensor.storage.view
            else storages[tensor.storage.key][1])
  if any(d >= 2**31 for d in shape):
    raise bad(f'has a dimension of 2**31 or more ({untrusted.short(str(shape))})')
  numel = math.prod(shape)
  if numel > length:
    raise bad(f'has {numel:,} elements, more than its storage holds ({length:,})')
  last = offset + sum((d - 1) * s for d, s in zip(shape, strides)) if numel else offset - 1
  if last >= length:
    raise bad(f'reaches element {last:,} of a storage of {length:,} (offset {offset:,}, '
              f'shape {shape}, strides {strides})')
  return numel


def _materialise(tensors: dict[str, Tensor], storages, buffers, path: str):
  """name -> numpy array (a copy), every view checked to lie inside its storage first."""
  counts = {name: _check_view(t, storages, name, path) for name, t in tensors.items()}
  held = sum(buffer.size for buffer in buffers.values())
  wanted = sum(counts[n] * np.dtype(t.storage.dtype).itemsize for n, t in tensors.items())
  if wanted > 2 * held:
    raise untrusted.WeightsFileError(
        f'{path}: its tensors would hold {wanted:,} bytes from {held:,} bytes of storage '
        '(more than twice over): refused.')
  arrays = {}
  for name, tensor in tensors.items():
    flat = buffers[tensor.storage.key].view(tensor.storage.dtype)
    if tensor.storage.view is not None:
      start, count = tensor.storage.view
      flat = flat[start:start + count]
    itemsize = flat.dtype.itemsize
    arrays[name] = np.lib.stride_tricks.as_strided(
        flat[tensor.offset:], tensor.shape, [s * itemsize for s in tensor.strides]).copy()
  return arrays


def read_state_dict(path: str, file=None) -> dict[str, np.ndarray]:
  """name -> numpy array of a .pth file saved by torch.save(state_dict).

  file: the file already open (binary, seekable: the bytes a caller hashed), else path is
  opened once. path names the file in errors. Raises untrusted.WeightsFileError.
  """
  if file is None:
    with open(path, 'rb') as f:
      return read_state_dict(path, f)
  try:
    size = file.seek(0, os.SEEK_END)
    file.seek(0)
    is_zip = zipfile.is_zipfile(file)
    file.seek(0)
    tree, storages, buffers = (_read_zip if is_zip else _read_legacy)(file, path, size)
    return _materialise(_state_tensors(tree, path), storages, buffers, path)
  except untrusted.WeightsFileError:
    raise
  except pickle.UnpicklingError as error:  # Ours name what they refused.
    raise untrusted.WeightsFileError(f'{path}: {untrusted.short(str(error), 300)}.') from None
  except Exception as error:  # pylint: disable=broad-except
    # A hostile file's every other failure (a malformed pickle or archive, a refused
    # global, an exhausted bound) is the one refusal, naming the file.
    raise untrusted.WeightsFileError(f'{path} is not a readable torch state dict: '
                                     f'{untrusted.short(str(error), 300)}') from None
