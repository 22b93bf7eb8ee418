import numpy as np
import pytest
import torch

from ml.drift import DETECTORS, DriftMonitor, make_detector, prequential_errors
from ml.models import ModelSpec, build_model
from ml.store import LocalFileSystem, ModelStore
from ml.trainer import (
    BOOST_LR,
    NO_REACTION,
    REINIT_HEAD,
    RESET_OPTIMIZER,
    IncrementalTrainer,
    TrainerConfig,
)
from transforms.records import Event
from transforms.training import OnlineTrainer, Pane, TrainingConfig, publish_initial_model

# River's parameters with the monitor's defaults: quiet on 3,000 stationary
# errors at a 10% rate, and firing within 300 errors of a jump to 50%.
DETECTOR_PARAMS = {"adwin": {}, "page_hinkley": {}, "kswin": {}}
SPEC = ModelSpec("classification", num_inputs=2, num_outputs=2, hidden=(8,))


def bernoulli_errors(rates_and_lengths, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([(rng.random(length) < rate).astype(float) for rate, length in rates_and_lengths])


def linear_pane(rng, size=50, flipped=False):
    """A pane of x ~ N(0, I) in 2D labelled by x0 + x1 > 0 (or its negation)."""
    features = rng.normal(size=(size, 2)).astype(np.float32)
    labels = (features.sum(axis=1) > 0).astype(np.int64)
    return features, (1 - labels) if flipped else labels


def train_panes(trainer, panes, first_time=0.0):
    events = []
    for index, (features, labels) in enumerate(panes):
        times = first_time + index * len(labels) + np.arange(len(labels), dtype=float)
        events += trainer.learn_many(features, labels, event_times=times, model_version=index).drift_events
    return events


@pytest.mark.parametrize("name", DETECTORS)
def test_detector_fires_after_jump(name):
    monitor = DriftMonitor(name, DETECTOR_PARAMS[name], seed=3)
    errors = bernoulli_errors([(0.1, 2000), (0.5, 1000)])

    events = monitor.update(errors, event_times=np.arange(len(errors)) * 2.0, model_version=4)

    assert events, f"{name} missed a jump in error rate from 0.1 to 0.5"
    first = events[0]
    assert 2000 <= first.position < 2300
    assert first.event_time == first.position * 2.0
    assert first.detector == name
    assert first.model_version == 4
    assert 0.0 <= first.error_rate <= 1.0


@pytest.mark.parametrize("name", DETECTORS)
def test_detector_quiet_on_stationary(name):
    monitor = DriftMonitor(name, DETECTOR_PARAMS[name], seed=3)

    events = monitor.update(bernoulli_errors([(0.1, 3000)], seed=1))

    assert events == []
    assert monitor.errors_seen == 3000


def test_kswin_same_seed_same_detections():
    errors = bernoulli_errors([(0.2, 500), (0.6, 500)] * 3, seed=5)

    first = DriftMonitor("kswin", seed=11).update(errors)
    second = DriftMonitor("kswin", seed=11).update(errors)

    assert [event.position for event in first] == [event.position for event in second]
    assert first


def test_monitor_statistic_names():
    errors = bernoulli_errors([(0.0, 500), (1.0, 300)])
    expected = {"adwin": "estimation", "page_hinkley": "mean", "kswin": "p_value"}

    for name in DETECTORS:
        events = DriftMonitor(name, DETECTOR_PARAMS[name]).update(errors)
        assert events[0].statistic == expected[name]


def test_monitor_state_round_trip():
    errors = bernoulli_errors([(0.1, 1500), (0.5, 600), (0.1, 900)], seed=2)
    times = np.arange(len(errors), dtype=float)
    original = DriftMonitor("kswin", seed=9)
    original.update(errors[:1450], times[:1450])

    restored = DriftMonitor("kswin", seed=9)
    restored.load_state_tensors(original.state_tensors())
    original_events = original.update(errors[1450:], times[1450:])

    assert original_events
    assert original_events == restored.update(errors[1450:], times[1450:])
    assert restored.errors_seen == len(errors)


def test_monitor_ignores_falling_error():
    errors = bernoulli_errors([(0.5, 1000), (0.05, 1000)])

    monitor = DriftMonitor("adwin")
    reported = monitor.update(errors)
    every_change = DriftMonitor("adwin", increases_only=False).update(errors)

    assert reported == []
    assert every_change
    assert monitor.detections == 0


def test_monitor_bounded_history():
    monitor = DriftMonitor("adwin", max_history=100, keep_history=30)

    monitor.update(np.zeros(250))

    assert len(monitor.state_tensors()["history"]) < 100
    assert monitor.errors_seen == 250


def test_monitor_rejects_bad_input():
    with pytest.raises(ValueError, match="drift detector must be one of"):
        make_detector("cusum")
    with pytest.raises(ValueError, match="invalid parameters .* for drift detector 'adwin'"):
        make_detector("adwin", {"threshold": 3})
    with pytest.raises(ValueError, match="event_times has 1 entries but errors has 2"):
        DriftMonitor().update([0.0, 1.0], event_times=[0.0])
    with pytest.raises(ValueError, match="keep_history must be positive and below max_history"):
        DriftMonitor(max_history=10, keep_history=10)


def test_prequential_errors_known_values():
    classification = prequential_errors(
        "classification", np.array([0, 1, 1]), np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7]])
    )
    regression = prequential_errors("regression", np.array([1.0, -2.0]), np.array([1.5, 1.0]))

    np.testing.assert_array_equal(classification, [0.0, 1.0, 0.0])
    np.testing.assert_allclose(regression, [0.5, 3.0])


def test_trainer_detects_label_flip():
    rng = np.random.default_rng(0)
    config = TrainerConfig(drift_detector="adwin", seed=1)
    trainer = IncrementalTrainer(build_model(SPEC, seed=1), "classification", config)
    before = [linear_pane(rng) for _ in range(30)]
    after = [linear_pane(rng, flipped=True) for _ in range(10)]

    quiet = train_panes(trainer, before)
    flipped = train_panes(trainer, after, first_time=1500.0)

    assert quiet == []
    assert flipped
    assert 1500.0 <= flipped[0].event_time < 1700.0
    assert flipped[0].position == int(flipped[0].event_time)


def test_config_rejects_bad_drift_options():
    with pytest.raises(ValueError, match="drift_detector must be one of"):
        TrainerConfig(drift_detector="ddm")
    with pytest.raises(ValueError, match="drift_reaction='boost_lr' needs a drift_detector"):
        TrainerConfig(drift_reaction=BOOST_LR)
    with pytest.raises(ValueError, match="drift_reaction must be one of"):
        TrainerConfig(drift_detector="adwin", drift_reaction="retrain")
    with pytest.raises(ValueError, match="ewc_lambda > 0 never consolidates"):
        TrainerConfig(ewc_lambda=1.0)
    with pytest.raises(ValueError, match="replay_size and replay_ratio must be non-negative"):
        TrainerConfig(replay_size=-1)


def test_config_accepts_params_dict():
    config = TrainerConfig(drift_detector="kswin", drift_params={"window_size": 50, "alpha": 0.01})

    assert config.drift_params == (("alpha", 0.01), ("window_size", 50))
    hash(config)


def trained_trainer(config: TrainerConfig, panes=5) -> IncrementalTrainer:
    rng = np.random.default_rng(4)
    trainer = IncrementalTrainer(build_model(SPEC, seed=config.seed), "classification", config)
    train_panes(trainer, [linear_pane(rng) for _ in range(panes)])
    return trainer


def parameters_of(trainer) -> dict:
    return {name: value.detach().clone() for name, value in trainer.model.named_parameters()}


def test_reaction_reset_optimizer():
    trainer = trained_trainer(TrainerConfig())
    weights = parameters_of(trainer)
    assert len(trainer.optimizer.state) > 0

    trainer.react(RESET_OPTIMIZER)

    assert len(trainer.optimizer.state) == 0
    assert all(torch.equal(weights[name], value) for name, value in parameters_of(trainer).items())
    assert trainer.optimizer.param_groups[0]["lr"] == trainer.config.learning_rate
    assert trainer.reaction_counts[RESET_OPTIMIZER] == 1


def test_reaction_boost_lr_then_restore():
    config = TrainerConfig(learning_rate=0.01, lr_boost_factor=4.0, lr_boost_panes=3)
    trainer = trained_trainer(config)
    rng = np.random.default_rng(8)

    trainer.react(BOOST_LR)
    learning_rates = []
    for _ in range(4):
        learning_rates.append(trainer.optimizer.param_groups[0]["lr"])
        trainer.learn_many(*linear_pane(rng))

    assert learning_rates == pytest.approx([0.04, 0.04, 0.04, 0.01])
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.01)
    assert trainer.boost_panes_left == 0


def test_reaction_reinit_head_only():
    trainer = trained_trainer(TrainerConfig(seed=2))
    before = parameters_of(trainer)
    standardizer = trainer.model.standardizer.mean.clone()
    head = trainer.model.network.layers[-1]
    hidden = trainer.model.network.layers[0]

    trainer.react(REINIT_HEAD)
    after = parameters_of(trainer)

    assert not torch.equal(before["network.layers.2.weight"], after["network.layers.2.weight"])
    assert not torch.equal(before["network.layers.2.bias"], after["network.layers.2.bias"])
    assert torch.equal(before["network.layers.0.weight"], after["network.layers.0.weight"])
    assert torch.equal(before["network.layers.0.bias"], after["network.layers.0.bias"])
    assert torch.equal(standardizer, trainer.model.standardizer.mean)
    assert head.weight not in trainer.optimizer.state
    assert hidden.weight in trainer.optimizer.state


def test_reaction_reinit_head_seeded():
    config = TrainerConfig(seed=2)
    first, second = trained_trainer(config), trained_trainer(config)

    first.react(REINIT_HEAD)
    second.react(REINIT_HEAD)

    assert torch.equal(first.model.network.layers[-1].weight, second.model.network.layers[-1].weight)


def test_reaction_none_only_counts():
    trainer = trained_trainer(TrainerConfig())
    weights = parameters_of(trainer)
    optimizer_entries = len(trainer.optimizer.state)

    trainer.react(NO_REACTION)

    assert all(torch.equal(weights[name], value) for name, value in parameters_of(trainer).items())
    assert len(trainer.optimizer.state) == optimizer_entries
    assert trainer.reaction_counts[NO_REACTION] == 1
    with pytest.raises(ValueError, match="drift reaction must be one of"):
        trainer.react("retrain")


def test_reaction_runs_on_detection():
    rng = np.random.default_rng(0)
    config = TrainerConfig(drift_detector="adwin", drift_reaction=BOOST_LR, lr_boost_panes=100, seed=1)
    trainer = IncrementalTrainer(build_model(SPEC, seed=1), "classification", config)

    train_panes(trainer, [linear_pane(rng) for _ in range(30)])
    events = train_panes(trainer, [linear_pane(rng, flipped=True) for _ in range(10)])

    assert trainer.reaction_counts[BOOST_LR] == len(events) > 0
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.1)


FULL_CONFIG = TrainerConfig(
    drift_detector="adwin", drift_reaction=BOOST_LR, lr_boost_panes=50,
    replay_size=200, replay_ratio=0.5, ewc_lambda=10.0, ewc_every_panes=4, seed=3,
)


def drifting_panes(seed, count, flip_at):
    rng = np.random.default_rng(seed)
    return [linear_pane(rng, flipped=index >= flip_at) for index in range(count)]


def test_trainer_store_round_trip(tmp_path):
    original = IncrementalTrainer(build_model(SPEC, seed=3), "classification", FULL_CONFIG)
    events = train_panes(original, drifting_panes(0, 40, flip_at=25))
    assert events, "the state under test needs a detection"
    assert original.boost_panes_left > 0

    store = ModelStore(str(tmp_path))
    version = store.publish(
        "model", 1, original.model.state_dict(), training_watermark=0.0,
        optimizer_state=original.optimizer.state_dict(),
        extra_tensors={"generator_state": original.generator.get_state(), **original.extra_state()},
    )
    restored = IncrementalTrainer(build_model(SPEC, seed=99), "classification", FULL_CONFIG)
    restored.model.load_state_dict(store.load_model_state(version.path))
    optimizer_state, extra = store.load_optimizer_state(version.path)
    restored.optimizer.load_state_dict(optimizer_state)
    restored.generator.set_state(extra["generator_state"])
    restored.load_extra_state(extra)

    more = drifting_panes(1, 30, flip_at=10)
    original_events = train_panes(original, more, first_time=2000.0)
    restored_events = train_panes(restored, more, first_time=2000.0)

    assert original_events == restored_events
    for name, value in original.model.state_dict().items():
        assert torch.equal(value, restored.model.state_dict()[name]), name
    assert original.reaction_counts == restored.reaction_counts
    assert original.ewc.consolidations == restored.ewc.consolidations


def test_extra_state_empty_when_off():
    trainer = trained_trainer(TrainerConfig())

    assert trainer.extra_state() == {}


def test_extra_state_keys_avoid_optimizer_prefix():
    trainer = IncrementalTrainer(build_model(SPEC, seed=3), "classification", FULL_CONFIG)
    train_panes(trainer, drifting_panes(0, 10, flip_at=5))

    keys = trainer.extra_state()

    assert keys
    assert not any(key.startswith("state.") for key in keys)


def labelled_events(panes, first_time):
    events = []
    for pane_index, (features, labels) in enumerate(panes):
        for row, (feature_row, label) in enumerate(zip(features, labels)):
            event_time = first_time + pane_index * 100 + row
            events.append(Event(f"e{event_time}", float(event_time), tuple(map(float, feature_row)), int(label)))
    return events


def online_trainer(tmp_path) -> OnlineTrainer:
    config = TrainingConfig(
        model_name="drift-model", model_spec=SPEC, trainer=FULL_CONFIG,
        serving_window_s=100.0, store_root=str(tmp_path),
    )
    store = ModelStore(str(tmp_path), LocalFileSystem())
    trainer = OnlineTrainer(config, publish_initial_model(config, store), filesystem=LocalFileSystem())
    trainer.setup()
    return trainer


def as_panes(events, pane_events=50):
    return [
        Pane(events[start].event_time, events[start].event_time + 100, 0, "on_time",
             tuple(events[start:start + pane_events]))
        for start in range(0, len(events), pane_events)
    ]


def test_online_trainer_emits_drift_events(tmp_path):
    dofn = online_trainer(tmp_path)
    version = dofn.initial_version

    for pane in as_panes(labelled_events(drifting_panes(0, 40, flip_at=25), first_time=0.0)):
        version = dofn._train_on_pane("drift-model", version, pane) or version
    drained = dofn.drain_drift_events()

    assert drained
    assert drained[0]["model_name"] == "drift-model"
    assert drained[0]["detector"] == "adwin"
    assert drained[0]["event_time"] >= 2500.0
    assert dofn.drain_drift_events() == []


def test_online_trainer_cold_restore_same_versions(tmp_path):
    panes = as_panes(labelled_events(drifting_panes(0, 40, flip_at=25), first_time=0.0))
    warm, cold = online_trainer(tmp_path / "warm"), online_trainer(tmp_path / "cold")
    warm_version, cold_version = warm.initial_version, cold.initial_version

    for pane in panes:
        warm_version = warm._train_on_pane("drift-model", warm_version, pane) or warm_version
        # Dropping the cached trainer forces a restore from the store each pane.
        cold._cached = None
        cold_version = cold._train_on_pane("drift-model", cold_version, pane) or cold_version

    warm_weights = warm._store.load_model_state(warm_version.path)
    cold_weights = cold._store.load_model_state(cold_version.path)
    assert warm_version.version == cold_version.version
    assert all(torch.equal(warm_weights[name], cold_weights[name]) for name in warm_weights)
    assert warm.drain_drift_events() == cold.drain_drift_events()
