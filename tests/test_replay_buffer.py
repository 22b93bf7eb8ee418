import copy

import numpy as np
import pytest
import torch

from ml.models import ModelSpec, build_model
from ml.replay_buffer import ReservoirReplayBuffer
from ml.trainer import IncrementalTrainer, TrainerConfig

# The 0.999 quantile of the chi-square distribution with 19 degrees of freedom.
CHI_SQUARE_19_DF_999 = 43.82


def numbered_stream(count: int) -> tuple:
    """Examples whose single feature and label are their position."""
    positions = torch.arange(count)
    return positions.to(torch.float32).unsqueeze(1), positions


def test_buffer_fills_in_order():
    buffer = ReservoirReplayBuffer(capacity=5, seed=0)

    buffer.add_many(*numbered_stream(3))

    assert len(buffer) == 3
    assert buffer.labels[:3].tolist() == [0, 1, 2]
    assert buffer.features[:3, 0].tolist() == [0.0, 1.0, 2.0]


def test_buffer_sample_uniform():
    stream_length, capacity, runs = 20, 5, 2000
    inclusions = np.zeros(stream_length)

    for seed in range(runs):
        buffer = ReservoirReplayBuffer(capacity, seed=seed)
        buffer.add_many(*numbered_stream(stream_length))
        inclusions[buffer.labels.numpy()] += 1

    expected = runs * capacity / stream_length
    chi_square = float(((inclusions - expected) ** 2 / expected).sum())
    assert inclusions.sum() == runs * capacity
    assert chi_square < CHI_SQUARE_19_DF_999, inclusions


def test_buffer_keeps_pairs_together():
    buffer = ReservoirReplayBuffer(capacity=10, seed=3)

    buffer.add_many(*numbered_stream(500))

    assert torch.equal(buffer.features[:, 0].to(torch.int64), buffer.labels)
    assert buffer.seen == 500


def test_buffer_chunking_same_contents():
    features, labels = numbered_stream(300)
    whole = ReservoirReplayBuffer(capacity=16, seed=4)
    chunked = ReservoirReplayBuffer(capacity=16, seed=4)

    whole.add_many(features, labels)
    for start in range(0, 300, 37):
        chunked.add_many(features[start:start + 37], labels[start:start + 37])

    assert torch.equal(whole.labels, chunked.labels)


def test_buffer_sample_without_replacement():
    buffer = ReservoirReplayBuffer(capacity=8, seed=1)
    buffer.add_many(*numbered_stream(100))

    features, labels = buffer.sample(8)
    empty = ReservoirReplayBuffer(capacity=8).sample(4)
    partial = ReservoirReplayBuffer(capacity=8)
    partial.add_many(*numbered_stream(3))

    assert sorted(labels.tolist()) == sorted(buffer.labels.tolist())
    assert len(set(labels.tolist())) == 8
    assert empty == (None, None)
    assert len(partial.sample(5)[1]) == 3


def test_buffer_state_round_trip():
    features, labels = numbered_stream(700)
    original = ReservoirReplayBuffer(capacity=32, seed=6)
    original.add_many(features[:400], labels[:400])

    restored = ReservoirReplayBuffer(capacity=32, seed=99)
    restored.load_state_tensors(original.state_tensors())
    original.add_many(features[400:], labels[400:])
    restored.add_many(features[400:], labels[400:])

    assert torch.equal(original.labels, restored.labels)
    assert torch.equal(original.sample(10)[1], restored.sample(10)[1])
    assert restored.seen == 700


def test_buffer_rejects_bad_input():
    with pytest.raises(ValueError, match="capacity must be at least 1, got 0"):
        ReservoirReplayBuffer(capacity=0)
    with pytest.raises(ValueError, match="features has 2 rows but labels has 3"):
        ReservoirReplayBuffer(capacity=4).add_many(torch.zeros(2, 1), torch.zeros(3))


def test_trainer_replay_round_trip():
    spec = ModelSpec("classification", num_inputs=2, num_outputs=2, hidden=(4,))
    config = TrainerConfig(replay_size=64, replay_ratio=0.5, seed=2)
    rng = np.random.default_rng(0)
    panes = [rng.normal(size=(40, 2)).astype(np.float32) for _ in range(8)]
    original = IncrementalTrainer(build_model(spec, seed=2), "classification", config)
    for features in panes[:5]:
        original.learn_many(features, (features[:, 0] > 0).astype(np.int64))

    restored = IncrementalTrainer(build_model(spec, seed=2), "classification", config)
    restored.model.load_state_dict(original.model.state_dict())
    # load_state_dict keeps the tensors it is given, so the copy stops the
    # two optimizers from sharing their moments.
    restored.optimizer.load_state_dict(copy.deepcopy(original.optimizer.state_dict()))
    restored.generator.set_state(original.generator.get_state())
    restored.load_extra_state(original.extra_state())
    for trainer in (original, restored):
        for features in panes[5:]:
            trainer.learn_many(features, (features[:, 0] > 0).astype(np.int64))

    assert original.replay.seen == restored.replay.seen == 320
    assert torch.equal(original.replay.labels, restored.replay.labels)
    for name, value in original.model.state_dict().items():
        assert torch.equal(value, restored.model.state_dict()[name]), name
