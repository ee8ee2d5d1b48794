import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """The test models are tiny: every op is dispatch overhead, and two OpenMP threads on two (often
    shared) cores spin-wait on each other — measured 5-10x slower training steps than one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
