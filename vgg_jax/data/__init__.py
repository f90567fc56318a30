"""Datasets -> tf.data -> numpy batches, with the paper's augmentation (Sec. 3.1, 3.2).

Knows nothing of the model. One module each:
  sources        digits (scikit-learn's 8x8 scans as 32x32 RGB, the offline default),
                 fake (random pixels made in tf.data), image folders
                 (root/<split>/<class>/*.jpg|png) and TFDS, sharded per process
  scan           image folders checked once (every file decoded, EXIF orientation
                 read), cached as JSON in the work dir
  preprocessing  decoding, EXIF orientation, rescaling, crops, flip, PCA colour shift
  statistics     the mean RGB and the RGB PCA basis, computed once and cached as JSON
  statistics_cache  the JSON file they are cached in (read without TensorFlow)
  iterators      the seeded, resumable train stream and the padded eval pass

Batches are dicts of host-local numpy arrays: images [b, H, W, 3] float32 (mean RGB
subtracted), labels [b] int32, and for evaluation mask [b] bool (False marks padding).
b = global_batch_size / process_count; each process reads only its own examples.
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class Shard:
  """This process's share of a split: process `index` of `count` reads every count-th."""
  index: int = 0
  count: int = 1


# config.data.source: the kinds of Source (sources.load_source), checked by config_checks.
SOURCES = ('digits', 'folder', 'tfds', 'fake')
# The image files a folder source (and the LPIPS command line) reads; lower case.
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif')
