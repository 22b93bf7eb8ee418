"""Checkpoints, store paths, schemas and input files are read without running code."""

import json
import os
import pickle

import pytest
import torch
from google.protobuf import text_format

from ml.store import METADATA_FILE, MODEL_FILE, ModelStore, validate_model_name
from transforms import schema as schema_lib
from transforms import sources


class _WriteMarker:
    """Unpickling this object creates the marker file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_store_rejects_pickle_checkpoint(tmp_path):
    marker = tmp_path / "marker"
    store = ModelStore(str(tmp_path / "models"))
    published = store.publish("model", 1, {"w": torch.zeros(2)}, training_watermark=0.0)
    with open(os.path.join(published.path, MODEL_FILE), "wb") as file:
        pickle.dump(_WriteMarker(str(marker)), file)
    # The same bytes would run the payload under pickle or torch.load(weights_only=False).
    with open(os.path.join(published.path, MODEL_FILE), "rb") as file:
        payload = file.read()

    with pytest.raises(Exception, match="header|Header|deserializ|invalid"):
        store.load_model_state(published.path)

    assert not marker.exists()
    pickle.loads(payload).close()
    assert marker.exists()


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", "/abs", "", "a\\b", ".hidden", "x" * 129])
def test_model_name_rejected(tmp_path, name):
    with pytest.raises(ValueError, match="model name .* is invalid"):
        validate_model_name(name)
    with pytest.raises(ValueError, match="model name .* is invalid"):
        ModelStore(str(tmp_path)).publish(name, 1, {"w": torch.zeros(1)}, training_watermark=0.0)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("relative", [
    "../outside/v000001", "model/../../v000001", "model/v000001/..", "model", "model/v1", "model/v000001/x",
])
def test_version_path_outside_store_rejected(tmp_path, relative):
    root = str(tmp_path / "models")
    store = ModelStore(root)

    with pytest.raises(ValueError, match="is not a version directory of the model store"):
        store.load_model_state(f"{root}/{relative}")
    with pytest.raises(ValueError, match="is not a version directory of the model store"):
        store.read_version(f"{root}/{relative}")


def test_version_path_other_root_rejected(tmp_path):
    other = ModelStore(str(tmp_path / "other"))
    published = other.publish("model", 1, {"w": torch.zeros(1)}, training_watermark=0.0)

    with pytest.raises(ValueError, match="is not a version directory"):
        ModelStore(str(tmp_path / "models")).load_model_state(published.path)


def test_schema_with_code_rejected(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "schema.pbtxt"
    path.write_text(
        f'!!python/object/apply:os.system ["touch {marker}"]\n'
        f'feature {{ name: "x" type: FLOAT }}\n'
    )

    with pytest.raises(text_format.ParseError):
        schema_lib.load_schema(str(path))
    assert not marker.exists()


def test_schema_code_strings_inert(tmp_path):
    code = "__import__('os').system('touch pwned')"
    path = tmp_path / "schema.pbtxt"
    path.write_text(
        'feature { name: "c" type: BYTES string_domain { value: "%s" } }\n'
        'feature { name: "y" type: INT string_domain { value: "0" value: "1" } annotation { tag: "label" } }\n'
        'annotation { tag: "task:classification" }\n' % code.replace("'", "\\'")
    )

    schema = schema_lib.load_schema(str(path))

    assert list(schema.feature[0].string_domain.value) == [code]
    assert schema_lib.encode_features({"c": code}, schema) == (1.0,)
    assert not os.path.exists("pwned")


def test_jsonl_code_strings_stay_strings(tmp_path):
    values = {
        "code": "__import__('os').system('touch pwned')",
        "yaml": "!!python/object/apply:os.system ['touch pwned']",
        "template": "${jndi:ldap://127.0.0.1/x} {{7*7}}",
    }
    path = tmp_path / "events.jsonl"
    path.write_text(json.dumps({"ts": 1_700_000_000, "y": 1, **values}) + "\n")

    records = list(sources.read_source_records(
        sources.SourceConfig(input=str(path), timestamp_column="ts", label_column="y")))

    assert len(records) == 1
    for key, value in values.items():
        assert records[0].row[key] == value
    assert not os.path.exists("pwned")


def test_store_writes_no_pickle(tmp_path):
    store = ModelStore(str(tmp_path))
    published = store.publish("model", 1, {"w": torch.ones(3)}, training_watermark=0.0,
                              optimizer_state=torch.optim.SGD([torch.nn.Parameter(torch.ones(3))]).state_dict())

    for name in os.listdir(published.path):
        with open(os.path.join(published.path, name), "rb") as file:
            data = file.read()
        # Pickle protocol 2+ streams start with b"\x80"; torch.save writes a zip.
        assert not data.startswith((b"\x80", b"PK")), name
    assert json.loads(open(os.path.join(published.path, METADATA_FILE)).read())["version"] == 1
