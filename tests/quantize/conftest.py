"""Fixtures shared by the low-bit quantization tests."""

import pytest
import torch

from fixtures import photo_models as models


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread (restored after): on a busy machine, two threads each of two test
    processes spin for one another and make calibrations several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def mobilenet():
    """The MobileNet-v1 stand-in, batch norm measured on 8 photo crops."""
    return models.mobilenet(seed=0, images=8)
