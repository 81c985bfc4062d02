import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxddpm import data


def test_the_bundled_digits_are_scikit_learns():
    sklearn_datasets = pytest.importorskip("sklearn.datasets", reason="compares with scikit-learn's copy of the digits")
    reference = sklearn_datasets.load_digits()
    images, labels = data._bundled_digits()
    np.testing.assert_array_equal(images, reference.images)
    np.testing.assert_array_equal(labels, reference.target)


def test_digits_are_bundled_and_upscaled():
    ds = data.load_digits(16, 1)
    assert ds.images.shape == (1797, 16, 16, 1) and ds.images.dtype == np.uint8
    assert ds.num_classes == 10 and set(np.unique(ds.labels)) == set(range(10))
    assert ds.images.max() > 200 and ds.images.min() == 0


def test_folder_handles_modes_sizes_and_corrupt_files(tmp_path):
    Image.new("RGBA", (30, 17), (255, 0, 0, 128)).save(tmp_path / "a.png")
    Image.new("L", (5, 9), 100).save(tmp_path / "b.PNG")
    (tmp_path / "sub").mkdir()
    Image.new("RGB", (64, 64), (0, 0, 255)).save(tmp_path / "sub" / "c.jpg")
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "notes.txt").write_text("ignored")
    ds = data.load_folder(str(tmp_path), 8, 3)
    assert ds.images.shape == (3, 8, 8, 3) and ds.skipped == 1
    grey = data.load_folder(str(tmp_path), 8, 1)
    assert grey.images.shape == (3, 8, 8, 1)


def test_folder_errors(tmp_path):
    with pytest.raises(data.DataError, match="is not a readable directory"):
        data.load_folder(str(tmp_path / "missing"), 8, 3)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(data.DataError, match=r"holds no readable images \(1 JPEG/PNG files found, 1 unreadable\)"):
        data.load_folder(str(tmp_path), 8, 3)


def test_get_batch_is_an_epoch_permutation():
    images = jnp.arange(10, dtype=jnp.uint8).reshape(10, 1, 1, 1) * 20
    key = jax.random.key(0)
    seen = [np.asarray(data.get_batch(images, jnp.int32(s), key, 3, False)).ravel() for s in range(3)]
    values = np.round((np.concatenate(seen) + 1) * 127.5 / 20).astype(int)
    assert len(set(values.tolist())) == 9  # 3 batches of 3 from one permutation, last image dropped
    again = np.asarray(data.get_batch(images, jnp.int32(1), key, 3, False)).ravel()
    np.testing.assert_array_equal(again, seen[1])
    next_epoch = np.asarray(data.get_batch(images, jnp.int32(3), key, 3, False)).ravel()
    assert not np.array_equal(next_epoch, seen[0])


def test_get_batch_flips_horizontally():
    row = jnp.arange(4, dtype=jnp.uint8) * 50
    images = jnp.broadcast_to(row.reshape(1, 1, 4, 1), (64, 1, 4, 1))
    batch = np.asarray(data.get_batch(images, jnp.int32(0), jax.random.key(1), 64, True))[:, 0, :, 0]
    original = np.asarray(data.to_model_range(row))
    is_original = np.all(batch == original, axis=1)
    is_flipped = np.all(batch == original[::-1], axis=1)
    assert np.all(is_original | is_flipped)
    assert 10 < is_flipped.sum() < 54
