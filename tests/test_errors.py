"""`errors.one_line`: the one line a user is shown for an error."""

from __future__ import annotations

import pytest
from torch.utils.data import DataLoader, Dataset

from covidzoo.errors import BadInputError, one_line


class Damaged(Dataset):
    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int) -> None:
        raise BadInputError("vol_0001.npy: damaged; run `covidzoo data prepare` again")


def test_an_error_raised_in_a_loader_worker_keeps_its_own_line():
    """torch re-raises a worker's error with "Caught ... in DataLoader worker process N." and
    the worker's traceback as its message; the user's line is still the original one."""
    with pytest.raises(BadInputError) as caught:
        list(DataLoader(Damaged(), num_workers=1))
    assert one_line(caught.value) == "vol_0001.npy: damaged; run `covidzoo data prepare` again"


def test_own_errors_stand_alone_and_others_carry_their_type():
    assert one_line(BadInputError("--lr: must be positive\nmore")) == "--lr: must be positive"
    assert one_line(OSError("disk full")) == "OSError: disk full"
    assert one_line(KeyError()) == "KeyError"
