"""The node pack as ComfyUI loads it: a clone of the project in ``custom_nodes``, the nodes, the example workflows
and ``fouriscale comfyui install``."""

import asyncio
import json
import shutil
import subprocess
import sys

import pytest
import torch

import fouriscale
import fouriscale.comfyui as fc
from fouriscale import FouriScaleConfig
from fouriscale.comfyui.nodes import FouriScale, FouriScalePlan, config_from_widgets
from fouriscale.comfyui.workflows import example_workflows, workflow_json
from fouriscale.errors import SettingError
from support.frontend import cli, error_line

from .conftest import ROOT
from .twins import NATIVE, Twin, sample


def _defaults(node) -> dict:
    return {name: spec[1]["default"] for name, spec in node.INPUT_TYPES()["required"].items() if len(spec) > 1}


@pytest.fixture(scope="module")
def loaded(comfyui):
    """The project as ComfyUI-Manager leaves it (a clone in custom_nodes), loaded the way ComfyUI loads node packs."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    target = comfyui.root / "custom_nodes" / "fouriscale-clone"
    for name in listed.stdout.splitlines():
        if (ROOT / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, target / name)
    assert asyncio.run(comfyui.nodes.load_custom_node(str(target)))
    return target


def test_a_clone_in_custom_nodes_registers_the_nodes(comfyui, loaded):
    mappings, names = comfyui.nodes.NODE_CLASS_MAPPINGS, comfyui.nodes.NODE_DISPLAY_NAME_MAPPINGS
    assert mappings["FouriScale"] is FouriScale and mappings["FouriScalePlan"] is FouriScalePlan
    assert (names["FouriScale"], names["FouriScalePlan"]) == ("FouriScale", "FouriScale Plan")
    from comfy_config import config_parser

    config = config_parser.extract_node_configuration(str(loaded))  # the registry metadata, read as ComfyUI does
    assert (config.project.name, config.tool_comfy.publisher_id, config.tool_comfy.display_name) == (
        "fouriscale",
        "fouriscale",
        "FouriScale",
    )


def test_import_fouriscale_never_imports_comfyui():
    code = "import sys, fouriscale, fouriscale.comfyui.nodes; print([m for m in sys.modules if m.startswith('comfy')])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_widgets_are_the_library_settings_with_its_defaults():
    widgets = _defaults(FouriScale)
    native = widgets.pop("native_size")
    assert native == 0 and config_from_widgets(**widgets) == FouriScaleConfig()
    assert set(widgets) <= set(FouriScaleConfig.__dataclass_fields__)
    config = config_from_widgets(**dict(widgets, start_step=5, stop_step=9, freeu="off", sequential_uncond="on"))
    assert (config.start_step, config.stop_step, config.freeu, config.sequential_uncond) == (5, 9, None, True)
    with pytest.raises(ValueError, match=r"start_step \(30\) must not exceed stop_step \(10\)"):
        config_from_widgets(**dict(widgets, start_step=30, stop_step=10))


@pytest.fixture(scope="module")
def twin(comfyui):
    return Twin("sdxl")


def test_the_node_patches_as_the_api_does(comfyui, twin):
    positive, negative = twin.conds()
    (patched,) = FouriScale().patch(twin.model, **dict(_defaults(FouriScale), native_size=8 * NATIVE))
    api = fc.apply_fouriscale(twin.model, native_size=8 * NATIVE)
    a = sample(comfyui, patched, (16, 24), 3, positive, negative)
    assert torch.equal(a, sample(comfyui, api, (16, 24), 3, positive, negative))


def test_the_plan_node_shows_the_plan_of_both_hosts(comfyui, twin):
    patched = fc.apply_fouriscale(twin.model, native_size=8 * NATIVE, amp_guidance=True)
    result = FouriScalePlan().plan(patched, 192, 128, 10)
    text = result["result"][0]
    assert result["ui"]["text"] == [text]
    diffusers_plan = fouriscale.get_plan(twin.pipe.unet, 128, 192, 10, vae_scale_factor=8, amp_guidance=True)
    assert text == diffusers_plan.describe() and "amp x2.4" in text
    # An unpatched model: the paper's settings at the family's native size (SDXL: 1024 px, a no-op at 192x128).
    assert "1024x1024" in FouriScalePlan().plan(twin.model, 192, 128, 10)["result"][0]


def test_the_nodes_errors_name_no_setting_the_nodes_lack(comfyui, twin):
    """A size the plan refuses: the API's message offers a base size (``base_size=``), the nodes' message, from
    nodes without such a widget, does not; the data stay the same."""
    positive, negative = twin.conds()
    (patched,) = FouriScale().patch(twin.model, **dict(_defaults(FouriScale), native_size=8 * NATIVE))
    with pytest.raises(SettingError) as info:
        sample(comfyui, patched, (8, 64), 2, positive, negative)
    assert str(info.value).endswith("choose a size closer to square") and info.value.setting == "size"
    with pytest.raises(SettingError) as info:
        FouriScalePlan().plan(patched, 512, 64, 10)
    assert str(info.value).endswith("choose a size closer to square") and info.value.value == (64, 512)
    with pytest.raises(SettingError, match=r"set an explicit base size \(base_size=\(h, w\)\)$"):
        fc.get_plan(fc.apply_fouriscale(twin.model, native_size=8 * NATIVE), 512, 64, 10)


def _api_prompt(comfyui, workflow: dict) -> dict:
    """A workflow file as the prompt ComfyUI's page sends: links as inputs, widget values by input name."""
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        spec = comfyui.nodes.NODE_CLASS_MAPPINGS[node["type"]].INPUT_TYPES()
        inputs = {i["name"]: [str(links[i["link"]][1]), links[i["link"]][2]] for i in node["inputs"]}
        values = iter(node["widgets_values"])
        for name, options in {**spec["required"], **spec.get("optional", {})}.items():
            kind, extra = options[0], (options[1] if len(options) > 1 else {})
            if name in inputs or not (isinstance(kind, list) or kind in ("INT", "FLOAT", "STRING", "BOOLEAN")):
                continue
            inputs[name] = next(values)
            if extra.get("control_after_generate"):
                assert next(values) in ("fixed", "randomize", "increment", "decrement")
        assert next(values, None) is None, node["type"]  # every widget value used
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def test_the_example_workflows_are_valid_comfyui_prompts(comfyui, loaded):
    import execution

    checkpoints = comfyui.root / "models" / "checkpoints"
    (checkpoints / "sd_xl_base_1.0.safetensors").write_bytes(b"")  # validation checks names, loads nothing
    for name, workflow in example_workflows().items():
        assert (ROOT / "example_workflows" / f"{name}.json").read_text() == workflow_json(workflow)
        assert (loaded / "example_workflows" / f"{name}.json").is_file()
        for link in workflow["links"]:
            source = next(n for n in workflow["nodes"] if n["id"] == link[1])
            target = next(n for n in workflow["nodes"] if n["id"] == link[3])
            out_type = comfyui.nodes.NODE_CLASS_MAPPINGS[source["type"]].RETURN_TYPES[link[2]]
            assert out_type == link[5] == target["inputs"][[i["link"] for i in target["inputs"]].index(link[0])]["type"]
        valid, error, outputs, problems = asyncio.run(
            execution.validate_prompt("1", _api_prompt(comfyui, workflow), None)
        )
        assert valid, (name, error, problems)
        assert outputs


def test_fouriscale_comfyui_install(comfyui, capsys, tmp_path):
    assert cli("comfyui", "install", comfyui.root) == 0
    pack = comfyui.root / "custom_nodes" / "fouriscale"
    assert "installed the FouriScale nodes in" in capsys.readouterr().out
    assert sorted(p.name for p in (pack / "example_workflows").iterdir()) == sorted(
        f"{name}.json" for name in example_workflows()
    )
    comfyui.nodes.NODE_CLASS_MAPPINGS.pop("FouriScale", None)
    assert asyncio.run(comfyui.nodes.load_custom_node(str(pack)))
    assert comfyui.nodes.NODE_CLASS_MAPPINGS["FouriScale"] is FouriScale
    (pack / "example_workflows" / "stale.json").write_text("{}")
    assert cli("comfyui", "install", comfyui.root) == 0  # rerun: the pack is written anew
    assert not (pack / "example_workflows" / "stale.json").exists()
    assert not [p for p in pack.parent.iterdir() if p.name.startswith(".fouriscale")]
    # A pack it did not write (a clone), a folder that is not ComfyUI's, a path that is not there: one line, exit 2.
    (pack / "__init__.py").write_text("# a clone\n")
    for path, message in (
        (comfyui.root, "did not write"),
        (tmp_path, "is not a ComfyUI folder"),
        (tmp_path / "missing", "is not a ComfyUI folder"),
    ):
        capsys.readouterr()
        assert cli("comfyui", "install", path) == 2
        assert message in error_line(capsys)
    assert (pack / "__init__.py").read_text() == "# a clone\n"
    assert json.loads((pack / "example_workflows" / "fouriscale_two_pass.json").read_text())["nodes"]
