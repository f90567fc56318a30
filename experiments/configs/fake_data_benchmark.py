"""Throughput on synthetic images: fake_data_benchmark.py[:VARIANT].

  python launch.py --workdir=/tmp/bench --config=experiments/configs/fake_data_benchmark.py:D

VGG at 224x224, global batch 256, bfloat16, images generated inside tf.data (random
256x341 pixels, no files, no download), 200 steps. Reads images/s and train/mfu from
the progress lines or metrics.jsonl. On a CPU shrink it:
--config.model.width=0.125 --config.global_batch_size=16.
"""

from experiments.configs import base


def get_config(variant: str = 'D'):
  config = base.get_config()
  config.model.variant = variant
  config.model.dtype = 'bfloat16'
  config.data.source = 'fake'
  config.data.name = 'fake'
  config.data.mean_rgb = (127.5, 127.5, 127.5)
  config.data.fake_num_examples = 50_000
  config.data.fake_image_shape = (256, 341)
  config.num_train_steps = 200
  config.log_every_steps = 20
  config.eval_every_steps = 10**9  # Only the final eval.
  config.checkpoint_every_steps = 10**9  # Only the final checkpoint.
  return config
