"""Train on any train/validation image folder: --config.data.folder=ROOT.

  python launch.py --workdir=workdirs/cats_vs_dogs \\
      --config=experiments/configs/image_folder.py --config.data.folder=/data/cats_vs_dogs

ROOT holds train/<class>/*.jpg and validation/<class>/*.jpg (e.g. the common cats vs
dogs layout); the class count comes from the folders. VGG-D from scratch at 224x224 with
the paper's augmentation; the mean RGB is computed once and cached in the workdir.
"""

from experiments.configs import base


def get_config(root: str = ''):
  config = base.get_config()
  config.model.num_classes = 0  # 0: as many as class folders.
  config.data.source = 'folder'
  config.data.folder = root
  config.data.eval_split = 'validation'
  config.data.device_window = 352  # Hosts decode; the train step resamples (base.py).
  config.global_batch_size = 32
  config.eval_batch_size = 64
  config.num_epochs = 30.0
  config.log_every_steps = 20
  config.eval_every_steps = 500
  config.checkpoint_every_steps = 500
  return config
