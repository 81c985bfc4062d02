"""TFDS datasets (config flowers64): the real TFDS code path under tfds.testing.mock_data, and
what happens without the extra, without the data and without network."""

import socket
import sys
import time

import numpy as np
import pytest

from jaxddpm import data

tfds = pytest.importorskip("tensorflow_datasets", reason="TFDS is the flowers extra (pip install -e '.[flowers]')")


def test_tfds_path_under_mock_data(tmp_path):
    with tfds.testing.mock_data(num_examples=6):
        ds = data.load_tfds("oxford_flowers102", "train+validation+test", "", 16, 3, False, str(tmp_path))
    assert ds.images.shape == (18, 16, 16, 3)
    assert len(list(tmp_path.glob("*.npz"))) == 1
    # The cache is used from then on, without TFDS.
    again = data.load_tfds("oxford_flowers102", "train+validation+test", "", 16, 3, False, str(tmp_path))
    np.testing.assert_array_equal(again.images, ds.images)


def test_tfds_offline_gives_instructions(tmp_path):
    with pytest.raises(data.DataError, match="could not be prepared.*--config.data.data_dir=DIR"):
        data.load_tfds("oxford_flowers102", "train", str(tmp_path / "empty"), 16, 3, False, str(tmp_path / "cache"))


def test_without_network_the_download_is_not_attempted(tmp_path, monkeypatch):
    def unreachable(address, timeout=None, **kwargs):
        assert address == ("www.robots.ox.ac.uk", 443) and timeout == data.NETWORK_TIMEOUT_S
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    start = time.perf_counter()
    with pytest.raises(data.DataError, match=r"'oxford_flowers102' is not prepared in .* and www.robots.ox.ac.uk "
                                             r"cannot be reached to download it\. On a machine with network, run"):
        data.load_tfds("oxford_flowers102", "train", str(tmp_path / "tfds"), 16, 3, True, str(tmp_path / "cache"))
    assert time.perf_counter() - start < 30


def test_a_missing_module_is_named(tmp_path, monkeypatch):
    def missing(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'importlib_resources'")

    monkeypatch.setattr(tfds, "data_source", missing)
    with pytest.raises(data.DataError, match=r"could not be prepared \(ModuleNotFoundError: No module named 'importlib_resources'\)"):
        data.load_tfds("oxford_flowers102", "train", str(tmp_path / "empty"), 16, 3, False, str(tmp_path / "cache"))


def test_without_the_extra_the_error_names_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import fails as if not installed
    with pytest.raises(data.DataError, match=r"data.source=tfds needs TensorFlow Datasets .*pip install 'jaxddpm\[flowers\]'"):
        data.load_tfds("oxford_flowers102", "train", "", 16, 3, True, str(tmp_path / "cache"))


class ReachedTheDownload(Exception):
    pass


def test_the_flowers_builder_gets_as_far_as_the_download(tmp_path, monkeypatch):
    """Everything the Oxford Flowers102 builder imports to download and prepare is
    installed by the flowers extra: with HTTP stopped at the first request, preparing the
    dataset fails there, not on a missing module."""
    import requests.adapters

    def send(self, request, *args, **kwargs):
        raise ReachedTheDownload(request.url)

    monkeypatch.setattr(requests.adapters.HTTPAdapter, "send", send)
    builder = tfds.builder("oxford_flowers102", data_dir=str(tmp_path), file_format="array_record")
    with pytest.raises(ReachedTheDownload, match="https://www.robots.ox.ac.uk/~vgg/data/flowers/102/"):
        builder.download_and_prepare()
