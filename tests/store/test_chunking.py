from math import prod

import pytest
from hypothesis import given, strategies as st

from modelgit.store.chunking import chunk_layout


@given(shape=st.lists(st.integers(0, 50), max_size=3), itemsize=st.sampled_from([1, 2, 4, 8]),
       target=st.integers(1, 400))
def test_chunks_tile_the_tensor(shape, itemsize, target):
    shape = tuple(shape)
    chunks = chunk_layout(itemsize, shape, target)
    position = 0
    for chunk in chunks:
        assert chunk.start == position
        assert chunk.stop - chunk.start == prod(chunk.shape) * itemsize
        position = chunk.stop
    assert position == prod(shape) * itemsize


def test_appending_rows_keeps_earlier_chunks():
    before = chunk_layout(4, (1000, 64), target=4096)
    after = chunk_layout(4, (1010, 64), target=4096)
    assert after[: len(before) - 1] == before[:-1]


@pytest.mark.parametrize("shape", [(), (0,), (0, 5), (3,)])
def test_small_and_empty_tensors_are_one_chunk(shape):
    assert len(chunk_layout(4, shape)) == 1
