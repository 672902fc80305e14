"""The one `Controls` schema: its values, its JSON, and every control reaching every front-end as itself.

The wiring tests give every control a value unlike its default (`SAMPLE`) through each front-end's own
form (command-line options, manifest columns, the web page's inputs) and check that the edit receives
exactly `Controls(**SAMPLE)`: a control wired to the wrong field, or dropped, fails them.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
from click.testing import CliRunner

from redraft.apps import batch as B
from redraft.apps.cli import main
from redraft.editor import Editor
from redraft.errors import InputError
from redraft.p2p.controls import GROUPS, Controls, parse, to_text

SAMPLE = dict(
    editing="masactrl", kind="replace", reweight={"dog": 2.0}, cross_replace_steps={"dog": 0.3, "default_": (0.1, 0.7)},
    self_replace_steps=(0.1, 0.6), self_max_resolution=4, blend=["dog"], blend_exclude=["photo"],
    blend_threshold=0.45, blend_start=0.1, blend_stop=0.9, blend_resolution=4, layout_guidance=0.05,
    layout_guidance_steps=0.3, feature_replace_steps=0.25, feature_layers=["up_blocks.1.resnets.0"],
    renoise_step=0.5, renoise_strength=0.7, renoise_seed=3, skip_steps=0.2, target_guidance=9.0,
    masactrl_step=2, masactrl_layer=3, masactrl_mask=["cat", "dog"], masactrl_mask_threshold=0.2,
    pnp_f_t=0.6, pnp_attn_t=(0.1, 0.4),
)  # in the schema's order (the CSV form zips them with the columns)
SOURCE, TARGET = "a photo of a cat", "a photo of a dog"


def test_the_sample_sets_every_control_to_something_else():
    names = [n for n, _, _ in Controls.fields()]
    assert sorted(SAMPLE) == sorted(names)
    paper = Controls()
    assert all(getattr(Controls(**SAMPLE), n) != getattr(paper, n) for n in names)


def test_every_control_is_declared_once_with_its_spec():
    paper = Controls()
    assert (paper.cross_replace_steps, paper.self_replace_steps, paper.blend_threshold, paper.blend_start) == \
        (0.8, 0.4, 0.3, 0.2)  # the P2P paper's (reference.md)
    flags = [s.flag for _, s, _ in Controls.fields()]
    assert len(set(flags)) == len(flags)
    for name, spec, default in Controls.fields():
        assert spec.group in GROUPS and len(spec.help) > 20, name
        assert getattr(paper, name) == default


@pytest.mark.parametrize("name", list(SAMPLE))
def test_text_forms_read_back(name):
    value = getattr(Controls(**SAMPLE), name)
    assert parse(name, to_text(name, value)) == value


def test_json_and_png_round_trips(tmp_path):
    controls = Controls(**SAMPLE)
    assert Controls.from_json(json.loads(json.dumps(controls.to_json()))) == controls
    assert Controls.load(controls.save(tmp_path / "c.json")) == controls
    from PIL import Image

    from redraft.io.files import save_image

    png = save_image(Image.new("RGB", (4, 4)), tmp_path / "e.png", metadata={"controls": controls.to_json()})
    assert Controls.load(png) == controls
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"blend": ["dog"]}))  # a file may set a few controls: the rest stay
    assert Controls.load(partial, Controls(layout_guidance=0.1)) == Controls(layout_guidance=0.1, blend=["dog"])


@pytest.mark.parametrize("bad, message", [
    (dict(flavour=1), "the controls are: editing, kind, reweight"),
    (dict(editing="sdedit"), "unknown editing .sdedit.; choose one of p2p, masactrl, pnp"),
    (dict(layout_guidance=float("nan")), "layout_guidance is nan"),
    (dict(renoise_step=1.0), "0 <= renoise_step < 1"),
    (dict(self_replace_steps=(0.6, 0.2)), "after its end"),
    (dict(kind="swap"), "choose one of replace, refine, reweight"),
    (dict(reweight={"red": float("inf")}), "reweight of 'red'"),
    (dict(blend_threshold=True), "blend_threshold is True"),
])
def test_bad_values_are_refused_when_made(bad, message):
    with pytest.raises(InputError, match=message):
        Controls.make(**bad)


# ---------------------------------------------------------------- wiring, front-end by front-end

@pytest.fixture
def received(monkeypatch):
    """The Controls every `Editor.edit` / `generate` call receives (the real call then runs with them)."""
    seen = []
    real_edit, real_generate = Editor.edit, Editor.generate

    def edit(self, inversion, target, *, controls=None, **kwargs):
        seen.append(Controls.make(controls, **{k: kwargs.pop(k) for k in list(kwargs) if k in SAMPLE}))
        return real_edit(self, inversion, target, controls=seen[-1], **kwargs)

    def generate(self, prompts, *, controls=None, **kwargs):
        seen.append(Controls.make(controls, **{k: kwargs.pop(k) for k in list(kwargs) if k in SAMPLE}))
        return real_generate(self, prompts, controls=seen[-1], **kwargs)

    monkeypatch.setattr(Editor, "edit", edit)
    monkeypatch.setattr(Editor, "generate", generate)
    return seen


def cli_options(values: dict) -> list[str]:
    args = []
    for name, spec, _ in Controls.fields():
        if name not in values:
            continue
        value = values[name]
        if spec.type in ("words", "names", "weights"):
            items = [f"{k}={v}" for k, v in value.items()] if isinstance(value, dict) else value
            for item in items:
                args += [f"--{spec.flag}", item]
        else:
            args += [f"--{spec.flag}", to_text(name, value)]
    return args


def test_every_control_reaches_edit_from_the_command_line(tiny_folder, image, tmp_path, received):
    image.save(tmp_path / "in.png")
    r = CliRunner().invoke(main, ["--model", str(tiny_folder), "--device", "cpu", "edit", str(tmp_path / "in.png"),
                                  "-p", SOURCE, "-t", TARGET, "--steps", "3", "-o", str(tmp_path / "out.png"),
                                  *cli_options(SAMPLE)])
    assert r.exit_code == 0, r.output
    assert received == [Controls(**SAMPLE)]
    assert "controls of edit 1" in r.output and '"renoise_seed": 3' in r.output  # printed: the controls in effect
    # echoed into the outputs: --controls OUTPUT.png gives the same controls back
    assert Controls.load(tmp_path / "out.png") == Controls(**SAMPLE)
    assert Controls.load(tmp_path / "out.grid.png") == Controls(**SAMPLE)


def test_generate_takes_every_control_but_skip_steps(tiny_folder, tmp_path, received):
    wanted = {k: v for k, v in SAMPLE.items() if k != "skip_steps"}
    r = CliRunner().invoke(main, ["--model", str(tiny_folder), "--device", "cpu", "generate", "-p", SOURCE,
                                  "-t", TARGET, "--steps", "3", "-o", str(tmp_path / "g.png"), *cli_options(wanted)])
    assert r.exit_code == 0, r.output
    assert received == [Controls(**wanted)]
    assert "--skip-steps" not in CliRunner().invoke(main, ["generate", "--help"]).output


def test_a_controls_file_then_options_field_by_field(tiny_folder, image, tmp_path, received):
    image.save(tmp_path / "in.png")
    Controls(**SAMPLE).save(tmp_path / "c.json")
    r = CliRunner().invoke(main, ["--model", str(tiny_folder), "--device", "cpu", "edit", str(tmp_path / "in.png"),
                                  "-p", SOURCE, "-t", TARGET, "--steps", "3", "-o", str(tmp_path / "out.png"),
                                  "--controls", str(tmp_path / "c.json"), "--blend-threshold", "0.6"])
    assert r.exit_code == 0, r.output
    assert received == [Controls(**{**SAMPLE, "blend_threshold": 0.6})]


def test_a_bad_control_option_is_one_message_before_any_work(tiny_folder, image, tmp_path, received):
    image.save(tmp_path / "in.png")
    for option, message in ([("--renoise-step", "1.5"), "0 <= renoise_step < 1"],
                            [("--cross-steps", "red"), "not a number"],
                            [("--reweight", "red"), "WORD=NUMBER"]):
        r = CliRunner().invoke(main, ["--model", "no/such-model", "edit", str(tmp_path / "in.png"), "-p", SOURCE,
                                      "-t", TARGET, "-o", str(tmp_path / "out.png"), *option])
        assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output, r.output
    assert received == [] and not (tmp_path / "out.png").exists()


def manifest_columns(values: dict) -> dict:
    return {spec.column: values[name] for name, spec, _ in Controls.fields() if name in values}


@pytest.mark.parametrize("form", ["jsonl values", "csv text", "controls column", "run options"])
def test_every_control_reaches_a_batch_item(tmp_path, form):
    (tmp_path / "in.png").write_bytes(b"")  # never read: the manifest alone is checked here
    record = {"image": "in.png", "prompt": SOURCE, "target": TARGET}
    defaults = B.Defaults()
    if form == "jsonl values":
        record |= manifest_columns(SAMPLE)
    elif form == "csv text":
        record |= {k: to_text(n, v) for (n, v), k in zip(SAMPLE.items(), manifest_columns(SAMPLE))}
    elif form == "controls column":
        Controls(**SAMPLE).save(tmp_path / "c.json")
        record["controls"] = "c.json"
    else:
        defaults = B.Defaults(controls=dict(SAMPLE))
    if form == "csv text":
        import csv

        with open(tmp_path / "m.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(record))
            writer.writeheader()
            writer.writerow(record)
        (item,) = B.read_manifest(tmp_path / "m.csv", defaults)
    else:
        (tmp_path / "m.jsonl").write_text(json.dumps(record) + "\n")
        (item,) = B.read_manifest(tmp_path / "m.jsonl", defaults)
    assert item.error is None, item.error
    assert Controls.from_json(item.controls) == Controls(**SAMPLE)


def test_pie_bench_items_start_from_its_settings_and_options_override_them(tmp_path):
    (tmp_path / "mapping_file.json").write_text(json.dumps({"0": {
        "image_path": "a.jpg", "original_prompt": "a [cat]", "editing_prompt": "a [dog]", "blended_word": "cat dog"}}))
    (item,) = B.read_manifest(tmp_path / "mapping_file.json")
    got = Controls.from_json(item.controls)
    assert (got.cross_replace_steps, got.self_replace_steps, got.blend, got.reweight) == (0.4, 0.6, ["cat", "dog"],
                                                                                          {"dog": 2.0})
    (item,) = B.read_manifest(tmp_path / "mapping_file.json", B.Defaults(controls={"self_replace_steps": 0.3}))
    assert Controls.from_json(item.controls).self_replace_steps == 0.3


def test_every_manifest_column_is_documented():
    assert {s.column for _, s, _ in Controls.fields()} <= set(B.FIELDS)


def test_every_control_reaches_edit_from_the_web_page(editor, image, tmp_path, received):
    from redraft.apps.web import build

    image.save(tmp_path / "in.png")
    page = build(editor)
    shown, boxes = page.redraft_inputs
    assert list(boxes) == [n for n, _, _ in Controls.fields()]  # one input per control, in the schema's order
    import gradio as gr

    def ui(name, box, value):  # what a user enters in that input
        if isinstance(box, gr.Dropdown):
            return value
        if isinstance(box, (gr.Slider, gr.Number)):
            return value
        return to_text(name, value)

    cache, image_box, prompt, method, steps, targets = shown
    values = {cache: {}, image_box: str(tmp_path / "in.png"), prompt: SOURCE, method: "ddim", steps: 3,
              targets: TARGET}
    start = {box: box.value for box in boxes.values()}  # the page's inputs start at the paper's controls
    order = [*shown, *boxes.values()]
    for chosen in (values | start, values | {box: ui(n, box, SAMPLE[n]) for n, box in boxes.items()}):
        page.redraft_edit(*(chosen[c] for c in order), gr.Progress())
    assert received == [Controls(), Controls(**SAMPLE)]


def test_controls_are_a_plain_dataclass_with_no_hidden_state():
    c = Controls(**SAMPLE)
    assert dataclasses.replace(c) == c and Controls.make(c, renoise_seed=4).renoise_seed == 4
    assert c.changed()["renoise_seed"] == 3 and "renoise_seed" not in Controls().changed()
