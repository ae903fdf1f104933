"""Tier 1: the graph engine with stub nodes: validation JSON, order, caching, cycles, interruption, hooks."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from lienzo.errors import InvalidArgumentError
from lienzo.graph import (
    NODE_TYPES,
    ExecutionHooks,
    ExecutionInterrupted,
    Executor,
    GraphEnvironment,
    Input,
    NodeExecutionError,
    NodeType,
    PromptError,
    apply_settings,
    load_workflow,
    node_types,
    object_info,
    validate_prompt,
)
from lienzo.io.library import ModelLibrary

RUNS: list[str] = []


def const(context, value: int):
    RUNS.append(context.node_id)
    return (value,)


def add(context, a: int, b: int):
    RUNS.append(context.node_id)
    if a + b == 13:
        raise ValueError("unlucky sum")
    return (a + b,)


def show(context, value: int, label: str = "x", image=None):
    RUNS.append(context.node_id)
    return {"ui": {"values": [value], "label": [label]}, "result": ()}


STUBS = (
    NodeType("StubConst", const, (Input("value", "INT", {"default": 0, "min": 0, "max": 100}),), ("INT",)),
    NodeType("StubAdd", add, (Input("a", "INT"), Input("b", "INT")), ("INT",)),
    NodeType(
        "StubShow",
        show,
        (
            Input("value", "INT"),
            Input("label", "COMBO", choices=("x", "y"), optional=True),
            Input("image", "IMAGE", optional=True),
        ),
        output_node=True,
    ),
    NodeType("StubImage", const, (Input("value", "INT"),), ("IMAGE",)),
)


@pytest.fixture(autouse=True)
def stubs(monkeypatch):
    node_types()
    for stub in STUBS:
        monkeypatch.setitem(NODE_TYPES, stub.name, stub)
    RUNS.clear()


@pytest.fixture
def environment(tmp_path) -> GraphEnvironment:
    return GraphEnvironment(
        ModelLibrary(tmp_path / "models"), tmp_path / "in", tmp_path / "out", tmp_path / "tmp"
    )


def chain(a: int = 2, b: int = 3) -> dict:
    return {
        "1": {"class_type": "StubConst", "inputs": {"value": a}},
        "2": {"class_type": "StubConst", "inputs": {"value": b}},
        "3": {"class_type": "StubAdd", "inputs": {"a": ["1", 0], "b": ["2", 0]}},
        "4": {"class_type": "StubShow", "inputs": {"value": ["3", 0]}},
        "5": {"class_type": "StubConst", "inputs": {"value": 9}},
    }


class Recorder(ExecutionHooks):
    def __init__(self):
        self.events = []

    def execution_start(self, prompt_id):
        self.events.append(("start", prompt_id))

    def execution_cached(self, prompt_id, node_ids):
        self.events.append(("cached", list(node_ids)))

    def executing(self, prompt_id, node_id):
        self.events.append(("executing", node_id))

    def executed(self, prompt_id, node_id, ui_output):
        self.events.append(("executed", node_id, ui_output))


def errors_of(error: PromptError, node_id: str) -> list[str]:
    return [item["type"] for item in error.payload["node_errors"][node_id]["errors"]]


def test_sources_run_first_and_unneeded_nodes_never_run(environment):
    hooks = Recorder()
    result = Executor(environment).execute(chain(), prompt_id="p1", hooks=hooks)
    assert result == {"4": {"values": [5], "label": ["x"]}}
    assert set(RUNS) == {"1", "2", "3", "4"} and RUNS.index("3") > max(RUNS.index("1"), RUNS.index("2"))
    assert RUNS[-1] == "4"
    assert hooks.events[0] == ("start", "p1") and hooks.events[1] == ("cached", [])
    assert hooks.events[-2] == ("executed", "4", {"values": [5], "label": ["x"]})
    assert hooks.events[-1] == ("executing", None)


def test_unchanged_nodes_are_cached_and_a_change_reruns_only_what_depends_on_it(environment):
    executor = Executor(environment)
    executor.execute(chain(), prompt_id="a")
    RUNS.clear()
    hooks = Recorder()
    assert executor.execute(chain(), prompt_id="b", hooks=hooks) == {"4": {"values": [5], "label": ["x"]}}
    assert RUNS == []
    assert sorted(hooks.events[1][1]) == ["1", "2", "3", "4"]
    assert ("executed", "4", {"values": [5], "label": ["x"]}) in hooks.events
    RUNS.clear()
    assert executor.execute(chain(b=4), prompt_id="c") == {"4": {"values": [6], "label": ["x"]}}
    assert sorted(RUNS) == ["2", "3", "4"]


def test_node_ids_do_not_matter_for_the_cache_only_inputs_do(environment):
    executor = Executor(environment)
    executor.execute(chain(), prompt_id="a")
    RUNS.clear()
    renamed = json.loads(json.dumps(chain()).replace('"1"', '"10"'))
    executor.execute(renamed, prompt_id="b")
    assert RUNS == []


def test_a_cycle_is_refused_naming_only_the_nodes_on_it(environment):
    prompt = chain()
    prompt["1"] = {"class_type": "StubAdd", "inputs": {"a": ["3", 0], "b": ["2", 0]}}
    with pytest.raises(PromptError) as caught:
        validate_prompt(prompt, environment)
    payload = caught.value.payload
    assert payload["error"]["type"] == "prompt_outputs_failed_validation"
    assert sorted(payload["node_errors"]) == ["1", "3"]
    assert errors_of(caught.value, "1") == ["dependency_cycle"]
    assert payload["node_errors"]["3"]["dependent_outputs"] == ["4"]
    assert payload["node_errors"]["3"]["class_type"] == "StubAdd"
    assert RUNS == []


@pytest.mark.parametrize(
    ("change", "node", "kind"),
    [
        (lambda p: p["3"]["inputs"].pop("b"), "3", "required_input_missing"),
        (lambda p: p["1"]["inputs"].update(value=101), "1", "value_bigger_than_max"),
        (lambda p: p["1"]["inputs"].update(value=-1), "1", "value_smaller_than_min"),
        (lambda p: p["1"]["inputs"].update(value="two"), "1", "invalid_input_type"),
        (lambda p: p["1"]["inputs"].update(value=2.5), "1", "invalid_input_type"),
        (lambda p: p["4"]["inputs"].update(label="z"), "4", "value_not_in_list"),
        (lambda p: p["3"]["inputs"].update(a=["8", 0]), "3", "bad_linked_input"),
        (lambda p: p["3"]["inputs"].update(a=["1", 1]), "3", "bad_linked_input"),
        (lambda p: p["4"]["inputs"].update(image=5), "4", "bad_linked_input"),
        (lambda p: p.update({"6": {"class_type": "StubImage", "inputs": {"value": 1}}})
         or p["3"]["inputs"].update(a=["6", 0]), "3", "return_type_mismatch"),
    ],
)  # fmt: skip
def test_input_errors_come_back_as_comfyui_node_errors(environment, change, node, kind):
    prompt = chain()
    change(prompt)
    with pytest.raises(PromptError) as caught:
        Executor(environment).execute(prompt, prompt_id="x")
    assert errors_of(caught.value, node) == [kind]
    error = caught.value.payload["node_errors"][node]["errors"][0]
    assert set(error) == {"type", "message", "details", "extra_info"} and error["extra_info"]["input_name"]
    json.dumps(caught.value.payload)
    assert RUNS == []


def test_unknown_nodes_and_prompts_without_outputs_are_refused(environment):
    prompt = chain()
    prompt["7"] = {"class_type": "NoSuchNode", "inputs": {}, "_meta": {"title": "Mystery"}}
    with pytest.raises(PromptError) as caught:
        validate_prompt(prompt, environment)
    assert caught.value.payload["error"]["type"] == "missing_node_type"
    assert caught.value.payload["error"]["extra_info"]["class_type"] == "NoSuchNode"
    assert caught.value.payload["node_errors"] == {}
    del prompt["4"], prompt["7"]
    with pytest.raises(PromptError) as caught:
        validate_prompt(prompt, environment)
    assert caught.value.payload["error"]["type"] == "prompt_no_outputs"
    with pytest.raises(PromptError, match="No prompt"):
        validate_prompt({}, environment)


def test_a_failing_node_names_itself_and_the_nodes_before_it_stay_cached(environment):
    executor = Executor(environment)
    with pytest.raises(NodeExecutionError) as caught:
        executor.execute(chain(6, 7), prompt_id="x")
    assert (caught.value.node_id, caught.value.class_type) == ("3", "StubAdd")
    assert "unlucky sum" in str(caught.value)
    RUNS.clear()
    executor.execute(chain(6, 8), prompt_id="y")
    assert sorted(RUNS) == ["2", "3", "4"]


def test_interruption_stops_between_nodes(environment):
    interrupt = threading.Event()

    class StopAfterFirst(ExecutionHooks):
        def executing(self, prompt_id, node_id):
            if node_id == "3":
                interrupt.set()

    with pytest.raises(ExecutionInterrupted):
        Executor(environment).execute(chain(), prompt_id="x", hooks=StopAfterFirst(), interrupt=interrupt)
    assert "4" not in RUNS


def test_object_info_has_comfyui_fields_for_every_node(environment):
    info = object_info(environment)
    for name, entry in info.items():
        assert entry["name"] == name
        for key in ("display_name", "description", "category", "output_node", "python_module", "input"):
            assert key in entry
        assert len(entry["output"]) == len(entry["output_name"]) == len(entry["output_is_list"])
    assert info["StubShow"]["input"]["optional"] == {"label": [["x", "y"], {}], "image": ["IMAGE"]}
    assert info["StubConst"]["input"]["required"]["value"] == ["INT", {"default": 0, "min": 0, "max": 100}]
    assert any(
        "shapes" in name for name in info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0]
    )
    json.dumps(info)


UI_WORKFLOW = {
    "nodes": [
        {"id": 1, "type": "StubConst", "mode": 0, "widgets_values": [2], "inputs": [], "title": "two"},
        {"id": 2, "type": "PrimitiveNode", "mode": 0, "widgets_values": [5, "fixed"]},
        {"id": 3, "type": "StubAdd", "mode": 0, "widgets_values": [0, 0],
         "inputs": [{"name": "a", "type": "INT", "link": 1}, {"name": "b", "type": "INT", "link": 2}]},
        {"id": 4, "type": "Reroute", "mode": 0, "inputs": [{"name": "", "type": "*", "link": 3}]},
        {"id": 5, "type": "StubShow", "mode": 0, "widgets_values": [0, "y"],
         "inputs": [{"name": "value", "link": 4}]},
        {"id": 6, "type": "StubShow", "mode": 2, "widgets_values": [0, "x"],
         "inputs": [{"name": "value", "link": 5}]},
        {"id": 7, "type": "Note", "mode": 0, "widgets_values": ["a note"]},
        {"id": 8, "type": "StubConst", "mode": 0, "widgets_values": []},
    ],
    "links": [[1, 1, 0, 3, 0, "INT"], [2, 2, 0, 3, 1, "INT"], [3, 3, 0, 4, 0, "INT"], [4, 4, 0, 5, 0, "INT"],
              [5, 3, 0, 6, 0, "INT"]],
}  # fmt: skip


def test_ui_format_becomes_the_api_prompt_through_primitives_and_reroutes(tmp_path, environment):
    path = tmp_path / "workflow.json"
    path.write_text(json.dumps(UI_WORKFLOW))
    prompt = load_workflow(path)
    assert sorted(prompt) == ["1", "3", "5", "8"]
    assert prompt["8"]["inputs"] == {"value": 0}
    assert prompt["1"]["inputs"] == {"value": 2} and prompt["1"]["_meta"]["title"] == "two"
    assert prompt["3"]["inputs"] == {"a": ["1", 0], "b": 5}
    assert prompt["5"]["inputs"] == {"value": ["3", 0], "label": "y"}
    assert Executor(environment).execute(prompt, prompt_id="u") == {"5": {"values": [7], "label": ["y"]}}


def test_settings_override_inputs_and_bad_sources_are_clear(tmp_path):
    prompt = apply_settings(chain(), ["1.value=40", "4.label=y"])
    assert prompt["1"]["inputs"]["value"] == 40 and prompt["4"]["inputs"]["label"] == "y"
    assert chain()["1"]["inputs"]["value"] == 2
    with pytest.raises(Exception, match="no node 99"):
        apply_settings(chain(), ["99.value=1"])
    with pytest.raises(Exception, match="neither"):
        load_workflow({"nodes": "x"})
    with pytest.raises(InvalidArgumentError, match="malformed UI-format workflow"):
        load_workflow({"nodes": [{"type": "StubConst"}]})
    with pytest.raises(Exception, match="does not exist"):
        load_workflow(Path(tmp_path / "missing.json"))


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
NODE = st.fixed_dictionaries(
    {
        "class_type": st.sampled_from(["StubConst", "StubAdd", "StubShow", "KSampler", "SaveImage", "Nope"])
        | JSON_VALUES
    },
    optional={
        "inputs": st.dictionaries(
            st.sampled_from(["value", "a", "b", "label", "image", "seed", "model"]),
            JSON_VALUES | st.tuples(st.sampled_from(["1", "2", "3", "9"]), st.integers(-2, 3)).map(list),
            max_size=4,
        )
        | JSON_VALUES,
        "_meta": JSON_VALUES,
    },
)


@settings(max_examples=300, deadline=None)
@given(
    prompt=st.dictionaries(st.sampled_from(["1", "2", "3", "4"]), NODE | JSON_VALUES, max_size=4)
    | JSON_VALUES
)
def test_any_json_prompt_is_either_valid_or_a_prompt_error(tmp_path_factory, prompt):
    root = tmp_path_factory.getbasetemp()
    environment = GraphEnvironment(ModelLibrary(root / "models"), root / "in", root / "out", root / "tmp")
    try:
        outputs = validate_prompt(prompt, environment)
    except PromptError as error:
        json.dumps(error.payload)
        assert error.payload["error"]["type"]
    else:
        assert outputs and all(prompt[node]["class_type"] in ("StubShow", "SaveImage") for node in outputs)


def pixels_node(context, value: int):
    return (torch.full((1, 8, 8, 3), value / 100),)


def test_saved_images_stay_in_their_folder_with_comfyui_names(environment, monkeypatch, tmp_path):
    monkeypatch.setitem(
        NODE_TYPES, "StubPixels", NodeType("StubPixels", pixels_node, STUBS[0].inputs, ("IMAGE",))
    )
    executor = Executor(environment)

    def save(prefix: str, value: int = 50) -> dict:
        prompt = {
            "1": {"class_type": "StubPixels", "inputs": {"value": value}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}},
        }
        return executor.execute(prompt, prompt_id=prefix)["2"]["images"][0]

    assert save("run/shot") == {"filename": "shot_00001_.png", "subfolder": "run", "type": "output"}
    assert save("run/shot", 60)["filename"] == "shot_00002_.png"
    saved = environment.output_dir / "run" / "shot_00002_.png"
    assert saved.stat().st_mode & 0o777 == 0o644 and "prompt" in Image.open(saved).info
    for bad in ("../escape", "/tmp/escape"):
        with pytest.raises(NodeExecutionError, match="filename_prefix"):
            save(bad)
    assert not (environment.output_dir.parent / "escape_00001_.png").exists()


def test_images_are_read_only_from_inside_the_input_folder(environment, tmp_path):
    outside = tmp_path / "secret.png"
    Image.new("RGB", (8, 8)).save(outside)
    environment.input_dir.mkdir(parents=True)
    (environment.input_dir / "link.png").symlink_to(outside)
    for name in ("../secret.png", str(outside), "link.png"):
        prompt = {
            "1": {"class_type": "LoadImage", "inputs": {"image": name}},
            "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
        }
        with pytest.raises(PromptError) as caught:
            validate_prompt(prompt, environment)
        assert errors_of(caught.value, "1") == ["value_not_in_list"]
    assert object_info(environment)["LoadImage"]["input"]["required"]["image"][0] == []
