import numpy as np
import pytest

from ml.store import PublishedVersion
from tests.versioned_pipeline import WINDOW_S, drifting_events, run_train_and_serve
from transforms.inference import select_as_of, select_latest, resolve_device
from transforms.training import ServingRecord

STREAMING = ["--streaming"]


@pytest.fixture(scope="module")
def events():
    return drifting_events()


@pytest.fixture(scope="module")
def batch_run(events):
    return run_train_and_serve(events, [], source="create")


@pytest.fixture(scope="module")
def streaming_run(events):
    return run_train_and_serve(events, STREAMING, source="teststream")


def _version(number, watermark):
    return PublishedVersion("m", number, f"/store/m/v{number:06d}", watermark, {})


def test_select_as_of_ignores_future_versions():
    initial = _version(0, float("-inf"))
    records = [ServingRecord(0, _version(3, 120.0)), ServingRecord(0, _version(4, 180.0))]

    assert select_as_of(150.0, records, initial).version == 3
    assert select_as_of(180.0, records, initial).version == 4
    assert select_as_of(100.0, records, initial).version == 0


def test_select_latest_takes_highest():
    initial = _version(0, float("-inf"))
    assert select_latest([_version(2, 50.0), _version(5, 10.0)], initial).version == 5


def test_resolve_device_falls_back_to_cpu(monkeypatch, caplog):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert resolve_device("cuda") == "cpu"
    assert "CUDA is not available" in caplog.text
    assert resolve_device("auto") == "cpu"
    with pytest.raises(ValueError, match="--device must be one of"):
        resolve_device("tpu")


def test_every_event_served_once(events, batch_run):
    assert set(batch_run["predictions"]) == {event.id for event in events}


def test_no_prediction_uses_future_labels(batch_run, streaming_run):
    for run in (batch_run, streaming_run):
        for prediction in run["predictions"].values():
            assert prediction.training_watermark <= prediction.event_time, prediction


def test_version_is_newest_trained_before_window(events, batch_run):
    # The version serving an event must be the newest one whose training
    # watermark is at or before the start of the event's serving window.
    versions = batch_run["versions"]
    for event in events:
        window_start = np.floor(event.event_time / WINDOW_S) * WINDOW_S
        eligible = [v.version for v in versions if v.training_watermark <= window_start]
        assert batch_run["predictions"][event.id].model_version == max(eligible), event


def test_batch_and_streaming_engines_agree(batch_run, streaming_run):
    batch_versions = {key: p.model_version for key, p in batch_run["predictions"].items()}
    streaming_versions = {key: p.model_version for key, p in streaming_run["predictions"].items()}
    assert streaming_versions == batch_versions
    assert [v.version for v in streaming_run["versions"]] == [v.version for v in batch_run["versions"]]


def test_batch_and_streaming_predictions_match(batch_run, streaming_run):
    for key, prediction in batch_run["predictions"].items():
        np.testing.assert_allclose(streaming_run["predictions"][key].prediction, prediction.prediction, rtol=1e-5)


def test_gap_windows_keep_serving_latest_version(batch_run):
    # Events after the 500 s gap are served by the version trained on the
    # last window before the gap, not by the initial model.
    after_gap = [p for p in batch_run["predictions"].values() if p.event_time >= 1800.0]
    first_after_gap = min(after_gap, key=lambda p: p.event_time)
    assert first_after_gap.model_version > 0


def test_versions_are_consecutive(batch_run):
    numbers = [v.version for v in batch_run["versions"]]
    assert numbers == list(range(len(numbers)))
    watermarks = [v.training_watermark for v in batch_run["versions"]]
    assert watermarks == sorted(watermarks)


def test_latest_selection_serves_newest_in_batch(events):
    run = run_train_and_serve(events, [], source="create", model_selection="latest")
    newest = max(v.version for v in run["versions"])
    assert {p.model_version for p in run["predictions"].values()} == {newest}


@pytest.mark.prism
@pytest.mark.parametrize("streaming", [False, True], ids=["batch", "streaming"])
def test_prism_agrees_with_direct_runner(events, batch_run, prism_location, streaming):
    from runners.prism import prism_pipeline_args

    args = prism_pipeline_args(prism_location) + (STREAMING if streaming else [])
    prism_run = run_train_and_serve(events, args, source="create")

    prism_versions = {key: p.model_version for key, p in prism_run["predictions"].items()}
    assert prism_versions == {key: p.model_version for key, p in batch_run["predictions"].items()}
    for key, prediction in batch_run["predictions"].items():
        np.testing.assert_allclose(prism_run["predictions"][key].prediction, prediction.prediction, rtol=1e-5)


def _applied_labels(pipeline_args, **kwargs):
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from transforms.inference import SafetensorsModelHandler, VersionedInference

    pipeline = beam.Pipeline(options=PipelineOptions(pipeline_args))
    events = pipeline | "Events" >> beam.Create([])
    records = pipeline | "Records" >> beam.Create([])
    initial = _version(0, float("-inf"))
    _ = events | "Serve" >> VersionedInference(
        SafetensorsModelHandler("/store"), WINDOW_S, initial, serving_records=records,
        published_versions=records, **kwargs)
    return {transform.full_label for transform in pipeline.transforms_stack[0].parts[-1].parts}


@pytest.mark.parametrize("pipeline_args, kwargs, joined", [
    ([], {}, False),
    (["--runner=PrismRunner"], {}, False),
    (["--runner=PrismRunner", "--streaming"], {}, True),
    (["--runner=FlinkRunner", "--streaming"], {}, True),
    (["--runner=DirectRunner", "--streaming"], {}, False),
    (["--runner=PrismRunner", "--streaming"], {"model_selection": "latest"}, False),
    (["--runner=PrismRunner"], {"serving_join": "group_by_key"}, True),
    (["--runner=PrismRunner", "--streaming"], {"serving_join": "side_input"}, False),
])
def test_serving_join_choice(pipeline_args, kwargs, joined):
    labels = _applied_labels(pipeline_args, **kwargs)

    assert ("Serve/JoinServingRecords" in labels) == joined
    assert ("Serve/WindowForServing" in labels) != joined


def test_serving_join_rejects_latest_selection():
    from transforms.inference import SafetensorsModelHandler, VersionedInference

    with pytest.raises(ValueError, match="serving_join='group_by_key' pairs events with serving records"):
        VersionedInference(SafetensorsModelHandler("/store"), WINDOW_S, _version(0, 0.0),
                           model_selection="latest", serving_join="group_by_key")
