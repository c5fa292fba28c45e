"""TokenWindows' validation batches come from the whole split, not its first (single-corpus) part."""
import numpy as np

from training.token_windows import TokenWindows


def test_val_batches_spread_over_the_whole_split_and_ranks_split_them():
    data = TokenWindows.__new__(TokenWindows)
    val = np.arange(100, dtype=np.int64)[:, None] * np.ones((1, 4), dtype=np.int64)  # window i holds i
    data.windows = {"val": val}
    (batch,) = data.val_batches(1, 10)
    picked = batch[:, 0]
    assert picked[0] == 0 and picked[-1] == 99 and len(np.unique(picked)) == 10   # both ends of the split
    halves = [data.val_batches(1, 10, rank, 2)[0][:, 0] for rank in (0, 1)]
    np.testing.assert_array_equal(np.concatenate(halves), picked)
    assert len(data.val_batches(50, 10)) == 10                                     # no more than the split holds
