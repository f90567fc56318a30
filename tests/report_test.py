"""vgg_jax.evaluation.report: counts equal a hand computation, the sheet holds the k most confident errors."""

import csv
import os

import numpy as np
from PIL import Image

from vgg_jax.evaluation import report

MEAN = np.asarray([100.0, 110.0, 120.0], np.float32)


def chunk(seed, n=40, classes=4):
  """Posteriors, labels and images whose pixels tell the image apart (value = its id)."""
  rng = np.random.default_rng(seed)
  probabilities = rng.dirichlet(np.full(classes, 0.3), n).astype(np.float32)
  labels = rng.integers(0, classes, n)
  ids = seed * 1000 + np.arange(n)
  images = [np.full((24 + i % 3, 30, 3), ids[i] % 200, np.float32) - MEAN for i in range(n)]
  return probabilities, labels, images, ids


def test_confusion_and_errors_equal_a_hand_computation():
  chunks = [chunk(seed) for seed in (1, 2, 3)]
  collector = report.Collector(4, MEAN, k=6)
  for probabilities, labels, images, _ in chunks:
    collector.add(probabilities, labels, images)
  probabilities, labels, ids = (np.concatenate([c[i] for c in chunks]) for i in (0, 1, 3))
  predicted = probabilities.argmax(axis=1)
  expected = np.zeros((4, 4), int)
  for t, p in zip(labels, predicted):
    expected[t, p] += 1
  np.testing.assert_array_equal(collector.confusion, expected)
  # The k most confident errors, most confident first, each with its own picture.
  confidence = probabilities.max(axis=1)
  wrong = np.flatnonzero(predicted != labels)
  best = wrong[np.argsort(-confidence[wrong], kind='stable')][:6]
  assert [e[0] for e in collector.errors] == [float(confidence[i]) for i in best]
  assert [(e[2], e[3]) for e in collector.errors] == [(labels[i], predicted[i]) for i in best]
  for error, i in zip(collector.errors, best):
    picture = error[4]
    assert picture.shape == (report.THUMBNAIL, report.THUMBNAIL, 3)
    centre = picture[report.THUMBNAIL // 2, report.THUMBNAIL // 2]
    np.testing.assert_array_equal(centre, np.clip(ids[i] % 200, 0, 255))  # Mean added back.
    assert (picture[0, 0] == 255).all()  # Letterboxed on white: 24-26 x 30 in a square.


def test_error_sheet_places_each_thumbnail_in_its_cell_most_confident_first(tmp_path):
  colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200),
             (200, 30, 200), (90, 90, 90)]
  errors = [(0.9 - 0.1 * i, i, 0, 1, np.full((report.THUMBNAIL,) * 2 + (3,), c, np.uint8))
            for i, c in enumerate(colours)]
  report.plot_errors(errors, ['cat', 'dog'], str(tmp_path / 'e.png'), 'eval')
  sheet = np.asarray(Image.open(tmp_path / 'e.png').convert('RGB'))
  assert sheet.shape == (round(100 * (2 * 2.3 + 0.4)), 100 * 5 * 2, 3)  # 5 columns, 2 rows.
  for i, colour in enumerate(colours):
    row, column = divmod(i, 5)
    centre_y, centre_x = round(100 * (0.4 + 2.3 * row + 0.33 + 0.91)), 100 * (2 * column + 1)
    np.testing.assert_array_equal(sheet[centre_y, centre_x], colour)
  assert (sheet[round(100 * (0.4 + 2.3)):, 100 * 4:] == 255).all()  # Cells 8-10: empty.
  # One error: the sheet is 4 inches wide (room for its title), the thumbnail centred.
  report.plot_errors(errors[:1], ['cat', 'dog'], str(tmp_path / 'one.png'), 'eval')
  one = np.asarray(Image.open(tmp_path / 'one.png').convert('RGB'))
  assert one.shape[1] == 400
  np.testing.assert_array_equal(one[round(100 * (0.4 + 0.33 + 0.91)), 200], colours[0])


def test_rows_and_pairs():
  confusion = np.asarray([[5, 2, 0], [0, 0, 0], [1, 3, 4]])
  rows = report.class_rows(confusion, ['cat', 'dog', 'fox'])
  assert rows[0] == {'class': 'cat', 'support': 7, 'top1_error': 2 / 7, 'confused_with': 'dog',
                     'confused_count': 2}
  assert rows[1]['top1_error'] is None and rows[1]['confused_count'] == 0
  assert rows[2]['confused_with'] == 'dog' and rows[2]['top1_error'] == 0.5
  assert report.confused_pairs(confusion, ['cat', 'dog', 'fox']) == [
      ('fox', 'dog', 3), ('cat', 'dog', 2), ('fox', 'cat', 1)]


def test_write_pictures_up_to_100_classes(tmp_path):
  probabilities, labels, images, _ = chunk(5, classes=4)
  collector = report.Collector(4, MEAN, k=5)
  collector.add(probabilities, labels, images)
  names = ['a,b', 'c', 'd', 'e']  # A comma: quoted in the CSV.
  paths = report.write(str(tmp_path), 'eval_single', collector, names, 'title')
  assert [os.path.basename(p) for p in paths] == [
      'eval_single_classes.md', 'eval_single_classes.csv', 'eval_single_confusion.png',
      'eval_single_errors.png']
  with open(tmp_path / 'eval_single_classes.csv') as f:
    rows = list(csv.DictReader(f))
  assert [r['class'] for r in rows] == names
  assert [int(r['support']) for r in rows] == collector.confusion.sum(axis=1).tolist()
  for png in paths[2:]:
    with Image.open(png) as picture:
      assert picture.size[0] > 200 and picture.size[1] > 200
  assert '| a,b |' in (tmp_path / 'eval_single_classes.md').read_text()


def test_over_100_classes_writes_tables_and_confused_pairs_only(tmp_path):
  rng = np.random.default_rng(0)
  collector = report.Collector(120, MEAN)
  labels = rng.integers(0, 120, 500)
  probabilities = np.eye(120, dtype=np.float32)[(labels + (rng.random(500) < 0.3)) % 120]
  collector.add(probabilities, labels, [np.zeros((8, 8, 3), np.float32)] * 500)
  names = [f'class{i}' for i in range(120)]
  paths = report.write(str(tmp_path), 'eval_dense', collector, names, 'title')
  assert sorted(os.listdir(tmp_path)) == ['eval_dense_classes.csv', 'eval_dense_classes.md',
                                          'eval_dense_confused.md']
  pairs = (tmp_path / 'eval_dense_confused.md').read_text().splitlines()[4:]
  expected = report.confused_pairs(collector.confusion, names)
  assert len(pairs) == len(expected) == 20
  assert pairs[0] == f'| {expected[0][0]} | {expected[0][1]} | {expected[0][2]} |'
  assert paths[-1].endswith('eval_dense_confused.md')


def test_a_failed_write_is_a_warning(tmp_path, caplog):
  collector = report.Collector(2, MEAN)
  collector.add(np.asarray([[0.9, 0.1]]), np.asarray([1]), [np.zeros((4, 4, 3), np.float32)])
  missing = str(tmp_path / 'no' / 'such' / 'dir')
  assert report.write_or_warn(missing, 'eval_single', collector, ['a', 'b'], 't') == []
  assert 'Could not write the evaluation report: FileNotFoundError' in caplog.text


def test_write_merged_names_classes_by_id_when_the_run_has_no_names(tmp_path):
  probabilities, labels, images, _ = chunk(7, classes=3)
  collector = report.Collector(3, MEAN)
  collector.add(probabilities, labels, images)
  paths = report.write_merged(collector, str(tmp_path), 'eval_final', None, 'title')
  assert [os.path.basename(p) for p in paths] == [
      'eval_final_classes.md', 'eval_final_classes.csv', 'eval_final_confusion.png',
      'eval_final_errors.png'] and all(os.path.exists(p) for p in paths)
  with open(tmp_path / 'eval_final_classes.csv') as f:
    assert [r['class'] for r in csv.DictReader(f)] == ['0', '1', '2']
