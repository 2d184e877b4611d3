import pytest

from spindle_proc import Spindle


@pytest.fixture
def spindle():
    s = Spindle().start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def shared_spindle():
    s = Spindle().start()
    yield s
    s.stop()
