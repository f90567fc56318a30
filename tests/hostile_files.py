"""Crafted weights files, as an attacker who hands a user a file would write them.

No torch is needed: the .pth files are assembled opcode by opcode (pickle protocol 2, as
torch.save writes it), so each case changes exactly one thing of a valid file. Every
payload, if run, creates MARKER's file: the tests assert it never appears.
"""

import os
import struct
import zlib

import numpy as np

from vgg_jax.pretrained import torch_files


# --- Pickle opcodes -----------------------------------------------------------------
def op_global(module: str, name: str) -> bytes:
  return b'c' + f'{module}\n{name}\n'.encode()


def op_str(text: str) -> bytes:
  data = text.encode()
  return b'X' + struct.pack('<I', len(data)) + data


def op_int(value: int) -> bytes:
  if 0 <= value < 256:
    return b'K' + bytes([value])
  if -2**31 <= value < 2**31:
    return b'J' + struct.pack('<i', value)
  data = value.to_bytes((value.bit_length() + 8) // 8, 'little', signed=True)
  return b'\x8a' + bytes([len(data)]) + data  # LONG1.


def op_tuple(*items: bytes) -> bytes:
  return b'(' + b''.join(items) + b't'


def payload(marker: str) -> bytes:
  """os.system('touch marker'): what a hostile pickle runs when it is trusted."""
  return op_global('os', 'system') + op_tuple(op_str(f'touch {marker}')) + b'R'


def storage_pid(key: str, numel: int, dtype='FloatStorage', view=None, legacy=False) -> bytes:
  items = [op_str('storage'), op_global('torch', dtype), op_str(key), op_str('cpu'), op_int(numel)]
  if legacy:
    items.append(b'N' if view is None else op_tuple(op_str(view[0]), op_int(view[1]),
                                                    op_int(view[2])))
  return op_tuple(*items) + b'Q'


def op_tensor(pid: bytes, offset: int, shape, strides) -> bytes:
  args = op_tuple(pid, op_int(offset), op_tuple(*map(op_int, shape)),
                  op_tuple(*map(op_int, strides)), b'\x89',
                  op_global('collections', 'OrderedDict') + b')R')
  return op_global('torch._utils', '_rebuild_tensor_v2') + args + b'R'


def state_pickle(items: dict[str, bytes], extra: bytes = b'') -> bytes:
  """A pickled dict name -> value opcodes; `extra` is pushed and dropped before STOP."""
  body = b''.join(op_str(k) + v for k, v in items.items())
  return b'\x80\x02}(' + body + b'u' + (extra + b'0' if extra else b'') + b'.'


def plain_pickle(value_opcodes: bytes, extra: bytes = b'') -> bytes:
  return b'\x80\x02' + value_opcodes + (extra + b'0' if extra else b'') + b'.'


# --- Containers ------------------------------------------------------------------------
def write_zip(path: str, entries: list[tuple]):
  """A zip written by hand: entries are (name, data) stored, or (name, deflated, size, crc).

  By hand so that a test can state sizes the data does not have (a bomb's inflated size).
  """
  local, central = b'', b''
  for entry in entries:
    name = entry[0].encode()
    if len(entry) == 2:
      data, method, size, crc = entry[1], 0, len(entry[1]), zlib.crc32(entry[1])
    else:
      data, method, size, crc = entry[1], 8, entry[2], entry[3]
    header = struct.pack('<4s5H3L2H', b'PK\x03\x04', 20, 0, method, 0, 0x21, crc, len(data),
                         size, len(name), 0)
    central += struct.pack('<4s6H3L5H2L', b'PK\x01\x02', 20, 20, 0, method, 0, 0x21, crc,
                           len(data), size, len(name), 0, 0, 0, 0, 0, len(local)) + name
    local += header + name + data
  end = struct.pack('<4s4H2LH', b'PK\x05\x06', 0, 0, len(entries), len(entries), len(central),
                    len(local), 0)
  with open(path, 'wb') as f:
    f.write(local + central + end)


def write_torch_zip(path: str, main: bytes, storages: dict[str, bytes], extra_entries=()):
  entries = [('archive/data.pkl', main), ('archive/byteorder', b'little')]
  entries += [(f'archive/data/{k}', v) for k, v in storages.items()]
  write_zip(path, entries + list(extra_entries))


def legacy_bytes(main: bytes, keys: list[str], storages: dict[str, tuple[int, bytes]],
                 magic: bytes | None = None, protocol: bytes | None = None,
                 info: bytes | None = None, keys_pickle: bytes | None = None) -> bytes:
  """The legacy stream; any of its five pickles can be replaced."""
  magic = magic or plain_pickle(op_int(torch_files.LEGACY_MAGIC))
  protocol = protocol or plain_pickle(op_int(1001))
  info = info or plain_pickle(b'}(' + op_str('protocol_version') + op_int(1001) +
                              op_str('little_endian') + b'\x88' + b'u')
  keys_pickle = keys_pickle or plain_pickle(b'](' + b''.join(map(op_str, keys)) + b'e')
  body = b''.join(struct.pack('<q', count) + data for count, data in storages.values())
  return magic + protocol + info + main + keys_pickle + body


# --- The cases ---------------------------------------------------------------------------
VALUES = np.arange(12, dtype=np.float32)  # The one honest storage of the valid files.


def valid_items(legacy=False, **changes) -> dict[str, bytes]:
  """{'weight': [3, 4] over a 12-float storage, 'bias': elements 4..7}, with changes."""
  view = dict(offset=0, shape=(3, 4), strides=(4, 1), numel=12)
  view.update(changes)
  pid = storage_pid('0', view['numel'], legacy=legacy)
  return {'weight': op_tensor(pid, view['offset'], view['shape'], view['strides']),
          'bias': op_tensor(storage_pid('0', view['numel'], legacy=legacy), 4, (4,), (1,))}


def write_valid(path: str, legacy: bool):
  """A valid file: weight = VALUES.reshape(3, 4), bias = VALUES[4:8]."""
  main = state_pickle(valid_items(legacy))
  if legacy:
    with open(path, 'wb') as f:
      f.write(legacy_bytes(main, ['0'], {'0': (12, VALUES.tobytes())}))
  else:
    write_torch_zip(path, main, {'0': VALUES.tobytes()})


def torch_cases(directory: str, marker: str) -> dict[str, str]:
  """name -> path of every crafted .pth case (and the two valid files)."""
  cases = {}

  def legacy(name, **kwargs):
    path = os.path.join(directory, f'{name}.pth')
    kwargs.setdefault('main', state_pickle(valid_items(legacy=True)))
    with open(path, 'wb') as f:
      f.write(legacy_bytes(keys=kwargs.pop('keys', ['0']),
                           storages=kwargs.pop('storages', {'0': (12, VALUES.tobytes())}),
                           **kwargs))
    cases[name] = path

  def zipped(name, main, storages=None, extra_entries=()):
    path = os.path.join(directory, f'{name}.pth')
    write_torch_zip(path, main, {'0': VALUES.tobytes()} if storages is None else storages,
                    extra_entries)
    cases[name] = path

  for name, legacy_format in (('valid_zip', False), ('valid_legacy', True)):
    cases[name] = os.path.join(directory, f'{name}.pth')
    write_valid(cases[name], legacy_format)
  # Code in every pickle of the file.
  code = payload(marker)
  legacy('code_in_magic', magic=plain_pickle(op_int(torch_files.LEGACY_MAGIC), code))
  legacy('code_in_protocol', protocol=plain_pickle(op_int(1001), code))
  legacy('code_in_system_info', info=plain_pickle(b'}', code))
  legacy('code_in_storage_keys', keys_pickle=plain_pickle(b'](' + op_str('0') + b'e', code))
  legacy('code_in_state_dict', main=state_pickle(valid_items(legacy=True), code))
  zipped('code_in_zip_state_dict', state_pickle(valid_items(), code))
  zipped('code_as_a_value', state_pickle({**valid_items(), 'x': code}))
  # Views outside their storage.
  zipped('offset_past_storage', state_pickle(valid_items(offset=200_000)))
  zipped('shape_past_storage', state_pickle(valid_items(shape=(200_000,), strides=(1,))))
  zipped('stride_2_pow_40', state_pickle(valid_items(shape=(2, 4), strides=(2**40, 1))))
  zipped('stride_0_expansion', state_pickle(valid_items(shape=(2**28,), strides=(0,))))
  zipped('negative_offset', state_pickle(valid_items(offset=-8)))
  zipped('negative_stride', state_pickle(valid_items(shape=(3, 4), strides=(-4, 1))))
  zipped('huge_dimension', state_pickle(valid_items(shape=(2**70, 0), strides=(1, 1))))
  legacy('view_past_root', main=state_pickle({'weight': op_tensor(
      storage_pid('0', 12, view=('v', 8, 100), legacy=True), 0, (4,), (1,))}))
  zipped('storage_larger_than_declared', state_pickle(valid_items(numel=2**40)))
  # Zip bombs: an entry nobody names, and one the pickle names with a bomb's size.
  bomb = deflate_bomb()
  zipped('unreferenced_bomb', state_pickle(valid_items()),
         extra_entries=[('archive/data/99', *bomb)])
  zipped('referenced_bomb', state_pickle(valid_items(numel=bomb[1] // 4)),
         storages={}, extra_entries=[('archive/data/0', *bomb)])
  # What raised raw TypeError, IndexError, RecursionError, MemoryError, OverflowError.
  zipped('storage_type_called', state_pickle({'w': op_global('torch', 'FloatStorage') +
                                              op_tuple() + b'R'}))
  zipped('short_persistent_id', state_pickle({'w': op_tuple(op_str('storage')) + b'Q'}))
  zipped('shape_not_a_tuple', state_pickle({'w': op_global('torch._utils', '_rebuild_tensor_v2')
                                            + op_tuple(storage_pid('0', 12), op_int(0),
                                                       op_int(5), op_int(1)) + b'R'}))
  nested = b'(' * 200_000 + b'l' * 200_000  # 200,000 nested lists.
  zipped('deeply_nested', state_pickle({**valid_items(), 'x': nested}))
  zipped('bytes8_claims_2_pow_50', b'\x80\x04\x8e' + struct.pack('<Q', 2**50) + b'xx.')
  zipped('set_bomb', b'\x80\x04' + b'\x8f0' * 500_000 + b'N.')  # EMPTY_SET, POP.
  zipped('pickle_over_limit', state_pickle({**valid_items(),
                                            'x': op_str('y' * (2 << 20))}))
  zipped('memo_index_bomb', state_pickle(valid_items(), b'N' + b'r' + struct.pack('<I', 2**31)))
  legacy('truncated_storage', storages={'0': (12, VALUES.tobytes()[:20])})
  legacy('count_2_pow_60', storages={'0': (2**60, VALUES.tobytes())})
  return cases


def deflate_bomb(blocks: int = 128) -> tuple[bytes, int, int]:
  """(raw deflate data, inflated size, crc32): 2 GiB of zeros in about 2 MB."""
  compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
  zeros = bytes(1 << 24)
  block = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)  # Self-contained.
  crc = 0
  for _ in range(blocks):
    crc = zlib.crc32(zeros, crc)
  return block * blocks + b'\x03\x00', blocks << 24, crc  # b'\x03\x00': the final block.


def keras_cases(directory: str, outside_file: str) -> dict[str, str]:
  """name -> path of crafted Keras 3 .weights.h5 files (VGG-11's layer names and shapes)."""
  import h5py  # pylint: disable=g-import-not-at-top
  from vgg_jax import models  # pylint: disable=g-import-not-at-top
  from vgg_jax.pretrained import weight_readers  # pylint: disable=g-import-not-at-top
  shapes, channels = {}, 3  # Keras layer -> (kernel, bias) shapes of VGG-11's convs.
  for layer in models.layer_table('A'):
    if layer.kind == 'conv':
      shapes[weight_readers.keras_layer_names('A')[layer.name]] = (
          (3, 3, channels, layer.features), (layer.features,))
      channels = layer.features
  cases = {}
  rng = np.random.default_rng(0)

  def build(name, first=None, layer3=None, link=None):
    path = os.path.join(directory, f'{name}.weights.h5')
    with h5py.File(path, 'w') as f:
      for i, (layer, (kernel, bias)) in enumerate(shapes.items()):
        group = f.create_group(f'layers/conv2d_{i}/vars')
        group.attrs['name'] = layer
        if i == 0 and first:
          first(group, kernel)
        elif i == 0 and link:
          group['0'] = link
        elif i == 2 and layer3:
          layer3(group, kernel)
        elif i < 2:
          group['0'] = rng.normal(size=kernel).astype(np.float32)
        else:
          group.create_dataset('0', kernel, np.float32)  # Never written.
        group['1'] = np.zeros(bias, np.float32)
    cases[name] = path

  build('external_storage', first=lambda g, shape: g.create_dataset(
      '0', shape, np.float32, external=[(outside_file, 0, h5py.h5f.UNLIMITED)]))
  build('external_link', link=h5py.ExternalLink(outside_file + '.h5', '/data'))
  build('soft_link', link=h5py.SoftLink('/layers'))

  def virtual(group, shape):
    layout = h5py.VirtualLayout(shape, np.float32)
    layout[...] = h5py.VirtualSource(outside_file + '.h5', 'data', shape)
    group.create_virtual_dataset('0', layout)

  build('virtual_dataset', first=virtual)
  build('huge_declared_shape', first=lambda g, shape: g.create_dataset(
      '0', (3, 3, 3, 2**40), np.float32, chunks=(1, 1, 1, 1024)))
  build('never_written', layer3=lambda g, shape: g.create_dataset('0', shape, np.float32))
  build('gzip_bomb', layer3=lambda g, shape: g.create_dataset(
      '0', data=np.zeros(shape, np.float32), compression='gzip', compression_opts=9))
  build('not_float', first=lambda g, shape: g.create_dataset('0', shape, h5py.string_dtype()))
  with h5py.File(outside_file + '.h5', 'w') as f:  # What the links point at.
    f['data'] = np.full(shapes['block1_conv1'][0], 7.0, np.float32)
  return cases
