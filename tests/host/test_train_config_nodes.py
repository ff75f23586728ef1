"""The training config nodes, generated from the lyco_core.train configs' metadata, show exactly what the
hand-written nodes showed (``train_config_nodes.json``, captured from them): node ids and their menu order, names,
descriptions, and per input its name, position (saved workflows store widget values by position), widget type,
default (value and JSON type), bounds, step, options and tooltip; and each node's defaults build a valid config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

FROZEN = json.loads(Path(__file__).with_name("train_config_nodes.json").read_text(encoding="utf-8"))


def schema(node) -> dict:
    s = node.define_schema()
    return {
        "display_name": s.display_name,
        "description": s.description,
        "category": s.category,
        "inputs": [[i.id, i.get_io_type(), i.as_dict()] for i in s.inputs],
        "outputs": [[o.get_io_type(), o.as_dict()] for o in s.outputs],
    }


def test_the_config_nodes_and_their_order_are_unchanged(comfy):
    ids = [node_id for node_id in comfy.lyco_nodes if node_id in FROZEN]
    assert ids == list(FROZEN)
    assert [k for k in comfy.lyco_nodes if k.endswith("Config")] == list(FROZEN)


@pytest.mark.parametrize("node_id", list(FROZEN))
def test_config_node_schema_is_unchanged(comfy, node_id):
    actual = json.loads(json.dumps(schema(comfy.lyco_nodes[node_id]), ensure_ascii=False))
    expected = FROZEN[node_id]
    assert [i[0] for i in actual["inputs"]] == [i[0] for i in expected["inputs"]]
    for got, want in zip(actual["inputs"], expected["inputs"]):
        assert got == want
        assert json.dumps(got, sort_keys=True) == json.dumps(want, sort_keys=True)  # 8.0 stays a float
    assert actual == expected


@pytest.mark.parametrize("node_id", list(FROZEN))
def test_config_node_defaults_build_its_config(comfy, node_id):
    node = comfy.lyco_nodes[node_id]
    values = {i.id: i.default for i in node.define_schema().inputs}
    config = node.execute(**values)[0]
    assert type(config).node.id == node_id
    assert getattr(config, "init_weights", True) is True and getattr(config, "init_lora_weights", True) is True
    assert config.target_modules == [part.strip() for part in values["target_modules"].split(",")]
    assert config.exclude_modules is None and config.modules_to_save is None and config.layers_pattern is None
