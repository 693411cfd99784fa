import pytest
import torch


@pytest.fixture(autouse=True)
def single_thread():
    """One torch thread: on a shared 2-core machine a second thread mostly waits (tiny convs run 10x slower)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
