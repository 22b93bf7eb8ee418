import torch

from ml.store import ModelStore
from transforms.store_io import BeamFileSystem


def test_beam_filesystem_lists_versions(tmp_path):
    store = ModelStore(str(tmp_path), BeamFileSystem())
    state = {"weight": torch.ones(2)}
    for version in (0, 1, 2):
        store.publish("m", version, state, float(version))

    assert [v.version for v in store.versions("m")] == [0, 1, 2]
    assert store.latest("m").version == 2
    assert torch.equal(store.load_model_state(store.latest("m").path)["weight"], state["weight"])


def test_beam_filesystem_empty_store(tmp_path):
    store = ModelStore(str(tmp_path / "missing"), BeamFileSystem())
    assert store.versions("m") == []
    assert store.latest("m") is None
