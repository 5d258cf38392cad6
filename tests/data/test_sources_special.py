"""DATA that is a named pipe, or holds one where a file is read, is never opened:
opening a pipe waits for a writer forever."""

from __future__ import annotations

import os
import signal
import sys

import pytest
from data_builders import good_images

from transferkit.data import load_data
from transferkit.errors import InputError

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX named pipes")


class Hung(BaseException):
    """Raised by the alarm; no ``except Exception`` in the code under test catches it."""


@pytest.fixture(autouse=True)
def at_most_ten_seconds():
    """Fail instead of hanging: the alarm interrupts an open blocked on a pipe."""

    def give_up(*_):
        raise Hung("still running after 10 s")

    previous = signal.signal(signal.SIGALRM, give_up)
    signal.alarm(10)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def test_a_csv_that_is_a_named_pipe_is_refused(tmp_path):
    os.mkfifo(tmp_path / "labels.csv")
    with pytest.raises(InputError) as err:
        load_data(tmp_path / "labels.csv")
    assert str(err.value) == f"data {str(tmp_path / 'labels.csv')!r} is a named pipe, not a file"


def test_a_dataset_description_that_is_a_named_pipe_is_passed_over(tmp_path):
    for name in ("a", "b"):
        good_images(tmp_path / name, 4, seed=len(name))
    os.mkfifo(tmp_path / "transferkit-dataset.json")
    data = load_data(tmp_path, val_split=0)
    assert data.classes == ["a", "b"] and len(data.train) == 8
