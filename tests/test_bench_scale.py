"""`redraft bench scale` (bench/scale.py) on tiny configs of the SD and SDXL layouts: every method's row,
its UNet samples as each method's algorithm needs them, the floor arithmetic, peak memory, the table and
the JSON, through the Python API and the CLI."""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner

from redraft.apps.cli import main
from redraft.bench import scale
from redraft.errors import InputError

STEPS, INNER = 2, 2
TEXT = dict(vocab_size=1000, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=32)  # the bench tokenizer: < 1000 ids
VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, sample_size=16, norm_num_groups=16,
           block_out_channels=[16, 32], down_block_types=["DownEncoderBlock2D"] * 2,
           up_block_types=["UpDecoderBlock2D"] * 2, scaling_factor=0.18215)
SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 steps_offset=1, set_alpha_to_one=False, clip_sample=False)
TINY = {
    "sd15": dict(pipeline="StableDiffusionPipeline", vae=VAE, scheduler=SCHEDULER,
                 text_encoders=[dict(TEXT, hidden_size=32)],
                 unet=dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=[32, 64],
                           down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"], norm_num_groups=16,
                           up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"], cross_attention_dim=32,
                           attention_head_dim=2)),
    "sdxl": dict(pipeline="StableDiffusionXLPipeline", vae=VAE, scheduler=dict(SCHEDULER, timestep_spacing="leading"),
                 text_encoders=[dict(TEXT, hidden_size=32), dict(TEXT, hidden_size=32, hidden_act="gelu")],
                 unet=dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                           block_out_channels=[32, 64], down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
                           up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"], transformer_layers_per_block=[1, 2],
                           attention_head_dim=[2, 4], use_linear_projection=True, norm_num_groups=16,
                           cross_attention_dim=64, addition_embed_type="text_time", addition_time_embed_dim=8,
                           projection_class_embeddings_input_dim=6 * 8 + 32)),
}


def expected_samples(method: str, backward: int) -> int:
    """UNet samples (latents through the UNet) of invert + reconstruct / edit, from each method's algorithm:
    the pivot is one conditional pass a step; a guided replay two (unconditional + conditional), NPI's one
    (its null is the prompt, Miyake et al. 2023 sec. 3); null-text adds, per inner update, one forward
    with the grad and, after the last, one guided pass to move on (Mokady et al. 2023 alg. 1: 3 a step when
    it runs out of updates); a P2P edit of an NPI inversion runs the source (1) and the target (2);
    Direct Inversion's edit of a DDIM inversion runs both rows guided (2 + 2)."""
    per_step = {"ddim": 1 + 2, "negative-prompt": 1 + 1, "direct": 1 + 4, "p2p-swap": 1 + 3, "null-text": 3 + 2}
    return per_step[method] * STEPS + (backward if method == "null-text" else 0)


@pytest.fixture(scope="module", params=["sd15", "sdxl"])
def result(request):
    return scale.run(request.param, steps=STEPS, inner_steps=INNER, spec=TINY[request.param], progress=False)


def test_every_method_has_its_samples_floor_and_memory(result):
    assert [r["method"] for r in result["rows"]] == list(scale.METHODS)
    assert result["size"] == 16 and result["steps"] == STEPS and result["weights_gb"] > 0
    assert result["text_encoders_freed"] == (result["family"] == "sdxl")
    rows = {r["method"]: r for r in result["rows"]}
    for method, r in rows.items():
        assert r["unet_samples"] == expected_samples(method, r["unet_backward"]), method
        for key in ("seconds", "vae_seconds", "unet_floor_seconds", "floor_seconds", "ratio_to_floor", "peak_gb",
                    "peak_over_weights_gb"):
            assert isinstance(r[key], float) and math.isfinite(r[key]), (method, key)
        assert r["seconds"] > 0 and r["unet_floor_seconds"] > 0 and r["vae_seconds"] > 0
        assert r["floor_seconds"] == pytest.approx(r["unet_floor_seconds"] + r["vae_seconds"])
        assert r["ratio_to_floor"] == pytest.approx(r["seconds"] / r["floor_seconds"])
        assert r["peak_gb"] > result["weights_gb"]  # the process holds the weights, at least
        assert r["peak_over_weights_gb"] == pytest.approx(r["peak_gb"] - result["weights_gb"])
    nti = rows["null-text"]
    assert 0 < nti["unet_backward"] <= INNER * STEPS and "backward" in result["bare_unet_seconds"]
    assert rows["negative-prompt"]["unet_samples"] == 2 * STEPS  # the floor of invert + reconstruct
    # the floor is priced per batch size: the samples of a method at the bare seconds of its calls
    bare = {k: v for k, v in result["bare_unet_seconds"].items() if k != "backward"}
    assert set(bare) >= {"1"} and all(v > 0 for v in bare.values())


def test_table_and_json(result, tmp_path):
    text = scale.table(result)
    lines = text.splitlines()
    assert lines[1] == scale.HEADER and len(lines) == 3 + len(scale.METHODS)
    for method, line in zip(scale.METHODS, lines[3:]):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0] == method and len(cells) == 8
        assert all(math.isfinite(float(c)) for c in (cells[1], *cells[3:]))
    path = scale.save(result, tmp_path)
    saved = json.loads(path.read_text())
    assert path.name == f"scale-{result['family']}.json" and saved["rows"] == json.loads(json.dumps(result["rows"]))


def test_cli_prints_the_table_and_writes_json(tmp_path, monkeypatch):
    monkeypatch.setattr(scale, "config", lambda family: TINY["sd15"])
    r = CliRunner().invoke(main, ["--device", "cpu", "bench", "scale", "--family", "sd15", "--steps", "1",
                                  "--methods", "negative-prompt,p2p-swap", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert "| negative-prompt |" in r.output and "| p2p-swap |" in r.output and "| ddim |" not in r.output
    saved = json.loads((tmp_path / "scale-sd15.json").read_text())
    assert [(x["method"], x["unet_samples"]) for x in saved["rows"]] == [("negative-prompt", 2), ("p2p-swap", 4)]


def test_unknown_family_and_method_are_refused():
    with pytest.raises(InputError, match="unknown family 'sd3'"):
        scale.config("sd3")
    with pytest.raises(InputError, match=r"unknown method\(s\) \['edict'\]"):
        scale.run("sd15", methods=["edict"], spec=TINY["sd15"])


def test_cpu_seconds_leave_out_the_waits_for_a_core(monkeypatch):
    """On a CPU the bench's seconds are the process's CPU time: time spent waiting (here a 0.4 s sleep in
    every image preparation, as a core held by another job would make it) is in the wall seconds only."""
    import time

    from redraft.editor import Editor

    prepare = Editor.prepare

    def slow(self, *a, **k):
        time.sleep(0.4)
        return prepare(self, *a, **k)

    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the bench is run (OMP_NUM_THREADS=1): CPU time then never exceeds wall time
    try:
        monkeypatch.setattr(Editor, "prepare", slow)
        result = scale.run("sd15", steps=1, methods=["negative-prompt"], spec=TINY["sd15"], progress=False)
    finally:
        torch.set_num_threads(threads)
    row = result["rows"][0]
    assert result["clock"] == "process CPU" and "process CPU seconds" in scale.table(result)
    assert row["wall_seconds"] > row["seconds"] + 0.3  # the 0.4 s wait is in the wall seconds only
