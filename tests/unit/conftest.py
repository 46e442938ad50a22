import pytest

from tests.unit.fake_time import EndingProcesses, FakeClock


@pytest.fixture
def fake_clock():
    """A FakeClock at 0 s (tests/unit/fake_time.py)."""
    return FakeClock()


@pytest.fixture
def ending_processes(fake_clock, monkeypatch):
    """tasks/common/processes.py's stops of real processes on the fake clock (tests/unit/fake_time.py)."""
    return EndingProcesses(fake_clock).install(monkeypatch)


@pytest.fixture(scope="session")
def tokenizer():
    """The real tokenizer of the embedded all-MiniLM-L6-v2 checkpoint (local files only)."""
    from transformers import AutoTokenizer

    from tasks.prepare.trace import embedded_model_dir

    return AutoTokenizer.from_pretrained(str(embedded_model_dir()), local_files_only=True)
