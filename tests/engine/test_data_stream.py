"""DataStream: passes of a DistributedSampler get new orders (set_epoch), and a saved position replays exactly."""
import torch
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler

from bilevel.data_stream import DataStream

ROWS = 12


def distributed_loader(via_batch_sampler: bool = False) -> DataLoader:
    sampler = DistributedSampler(range(ROWS), num_replicas=1, rank=0, shuffle=True, seed=3)
    if via_batch_sampler:
        return DataLoader(range(ROWS), batch_sampler=BatchSampler(sampler, batch_size=4, drop_last=False))
    return DataLoader(range(ROWS), batch_size=4, sampler=sampler)


def order_of_epoch(epoch: int) -> list:
    """What DistributedSampler documents for pass ``epoch``: the permutation seeded by seed + epoch."""
    return torch.randperm(ROWS, generator=torch.Generator().manual_seed(3 + epoch)).tolist()


def drawn(stream: DataStream, batches: int) -> list:
    return [row for _ in range(batches) for row in stream.next().tolist()]


def test_each_pass_of_a_distributed_sampler_has_its_own_order():
    for via_batch_sampler in (False, True):
        rows = drawn(DataStream(distributed_loader(via_batch_sampler), "train"), 9)  # three passes of 3 batches
        assert [rows[i * ROWS:(i + 1) * ROWS] for i in range(3)] == [order_of_epoch(e) for e in range(3)]


def test_a_restored_stream_continues_the_same_pass_and_the_next():
    stream = DataStream(distributed_loader(), "train")
    drawn(stream, 4)  # into the second pass
    position = stream.state_dict()
    expected = drawn(stream, 5)  # the rest of pass 1 and pass 2
    restored = DataStream(distributed_loader(), "train")
    restored.load_state_dict(position)
    assert drawn(restored, 5) == expected
    assert expected == order_of_epoch(1)[4:] + order_of_epoch(2)


def test_positions_saved_before_the_pass_number_was_recorded_restore_as_the_first_pass():
    stream = DataStream(distributed_loader(), "train")
    drawn(stream, 1)
    position = {key: value for key, value in stream.state_dict().items() if key != "epoch"}
    restored = DataStream(distributed_loader(), "train")
    restored.load_state_dict(position)
    assert drawn(restored, 2) == order_of_epoch(0)[4:]


def test_empty_data_and_a_used_up_iterator_are_told_apart():
    import pytest

    with pytest.raises(ValueError, match=r"^train: data yields no batches; pass a non-empty iterable$"):
        DataStream([], "train").next()
    stream = DataStream(iter([torch.zeros(1), torch.ones(1)]), "train")
    stream.next(), stream.next()
    with pytest.raises(ValueError, match=r"^train: data is an iterator, used up after one pass; pass an iterable "
                                         r"that restarts \(a DataLoader, a list\), or an endless generator$"):
        stream.next()


def test_a_distributed_sampler_inside_a_batch_sampler_given_as_sampler_gets_its_pass_number():
    """The DataLoader of docs/engine.md for tensor data: BatchSampler(DistributedSampler) as ``sampler=``."""
    sampler = BatchSampler(DistributedSampler(range(ROWS), num_replicas=1, rank=0, shuffle=True, seed=3), 4, False)
    rows = drawn(DataStream(DataLoader(torch.arange(ROWS), sampler=sampler, batch_size=None), "train"), 6)
    assert [rows[:ROWS], rows[ROWS:]] == [order_of_epoch(0), order_of_epoch(1)]


def test_an_empty_iterator_is_empty_data_not_a_used_up_one():
    import pytest

    with pytest.raises(ValueError, match="yields no batches"):
        DataStream(iter([]), "train").next()


def test_a_loader_with_its_own_generator_is_restored_to_the_same_order():
    def loader():
        return DataLoader(range(ROWS), batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(123))

    stream = DataStream(loader(), "train")
    drawn(stream, 4)  # into the second pass
    position = stream.state_dict()
    expected = drawn(stream, 5)
    restored = DataStream(loader(), "train")
    restored.load_state_dict(position)
    assert drawn(restored, 5) == expected


class DrawingSampler(torch.utils.data.Sampler):
    """A sampler whose set_epoch draws from torch's global generator (as some custom samplers do)."""

    def __init__(self):
        self.order = list(range(ROWS))

    def set_epoch(self, epoch):
        self.order = torch.randperm(ROWS).tolist()

    def __iter__(self):
        return iter(self.order)

    def __len__(self):
        return ROWS


def test_a_set_epoch_that_draws_random_numbers_is_replayed_too():
    torch.manual_seed(0)
    stream = DataStream(DataLoader(range(ROWS), batch_size=4, sampler=DrawingSampler()), "train")
    drawn(stream, 4)
    position, rng = stream.state_dict(), torch.get_rng_state()  # a checkpoint holds both (the Engine's "rng")
    expected = drawn(stream, 5)
    restored = DataStream(DataLoader(range(ROWS), batch_size=4, sampler=DrawingSampler()), "train")
    restored.load_state_dict(position)
    torch.set_rng_state(rng)  # restored after the levels, as Engine.load_state_dict does
    assert drawn(restored, 5) == expected


def test_a_loader_with_other_generators_than_the_checkpoints_is_refused():
    import pytest

    own = DataLoader(range(ROWS), batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(1))
    stream = DataStream(own, "train")
    drawn(stream, 1)
    restored = DataStream(DataLoader(range(ROWS), batch_size=4, shuffle=True), "train")
    with pytest.raises(ValueError, match=r"^train: the checkpoint's data had 1 generator\(s\) of its own and this "
                                         r"run's has 0; resume with the data loader the checkpoint was written with$"):
        restored.load_state_dict(stream.state_dict())
