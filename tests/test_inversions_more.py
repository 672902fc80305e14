"""Issue 33's inversions (edit-friendly DDPM, EDICT, ProxNPI, SPDInv) on the built-in shapes model: how
well each reconstructs a held-out scene against the VAE round trip and NPI, what each costs in UNet
passes, that a saved inversion keeps what it needs, and what each refuses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from redraft.errors import InputError
from redraft.eval.metrics import psnr
from redraft.inversions import METHODS
from redraft.io.inversion_file import Inversion
from redraft.shapes import world

STEPS = 5  # few steps: NPI is then well below the VAE ceiling (about 3 dB), so the bounds discriminate
TARGET = "a big blue circle"


@pytest.fixture(scope="module")
def builtin(reference_builtin):
    """The built-in model with P2P's defaults, on one thread."""
    torch.set_num_threads(1)
    return reference_builtin


@pytest.fixture(scope="module")
def scene():
    return world.scenes(5, 1, split="test")[0]  # held out from training; not the matrix's seeds (3, 11)


@pytest.fixture(scope="module")
def source(scene):
    return np.asarray(world.render(scene))


@pytest.fixture(scope="module")
def vae_psnr(builtin, scene, source):
    image = builtin.prepare(world.render(scene))
    return psnr(source, np.asarray(builtin.decode(builtin.encode([image]))[0]))


@pytest.fixture(scope="module")
def npi(builtin, scene):
    return builtin.invert(world.render(scene), scene.prompt(), method="negative-prompt", steps=STEPS, progress=False)


@pytest.fixture(scope="module")
def default(builtin, scene):
    """Each method's inversion with its defaults, made once (SPDInv's costs ~100 forward + backward passes)."""
    made = {}

    def get(method):
        if method not in made:
            made[method] = invert(builtin, scene, method)
        return made[method]

    return get


def with_options(inv, **options):
    """The same inversion with other edit-time options (SPDInv's pivots do not depend on them)."""
    return Inversion(**{**inv.__dict__, "options": {**inv.options, **options}})


def invert(builtin, scene, method, **kw):
    return builtin.invert(world.render(scene), scene.prompt(), method=method, steps=STEPS, progress=False, **kw)


def recon(builtin, inv, source) -> float:
    return psnr(source, np.asarray(builtin.reconstruct(inv, progress=False)))


@pytest.mark.parametrize("method", ["edit-friendly", "edict"])
def test_exact_inversions_reach_the_vae_round_trip(builtin, scene, source, vae_psnr, npi, method):
    """Edit-friendly's noise maps and EDICT's coupled inverse reconstruct exactly: within 0.1 dB of
    encode-then-decode, where plain DDIM at the same guidance (and NPI) stays dB below."""
    inv = invert(builtin, scene, method)
    assert recon(builtin, inv, source) >= vae_psnr - 0.1
    ddim = invert(builtin, scene, "ddim")
    assert recon(builtin, ddim, source) < vae_psnr - 3  # the bound is not one any inversion meets
    assert recon(builtin, npi, source) < vae_psnr - 1


def test_proxnpi_reconstructs_at_least_as_well_as_npi(builtin, scene, source, vae_psnr, npi):
    """ProxNPI's inversion is NPI's; its inversion guidance (recon_lr 1 from t < recon_t) puts the
    source branch back on its pivots, which end on the image's latent. Without that guidance the source
    branch is NPI's, bit for bit (its guidance difference is 0, so the proximal operator is a no-op)."""
    npi_psnr = recon(builtin, npi, source)
    prox = invert(builtin, scene, "proxnpi")
    assert recon(builtin, prox, source) >= npi_psnr + 2  # guidance on: close to the ceiling
    assert recon(builtin, prox, source) >= vae_psnr - 0.1
    off = invert(builtin, scene, "proxnpi", settings={"inversion_guidance": False})
    assert torch.equal(builtin.replay([off], progress=False), builtin.replay([npi], progress=False))


def test_spdinv_fixed_points_beat_npis_pivots(builtin, scene, source, npi, default):
    """SPDInv's fixed-point pivots alone (inversion guidance off) reconstruct better than NPI's DDIM
    pivots, and each solved step is closer to its fixed point than the DDIM estimate; with 0 rounds
    the pivots are the DDIM pivots themselves."""
    npi_psnr = recon(builtin, npi, source)
    spd = with_options(default("spdinv"), inversion_guidance=False)  # inversion guidance is an edit-time option
    assert recon(builtin, spd, source) >= npi_psnr + 0.5
    assert recon(builtin, default("spdinv"), source) >= npi_psnr  # the default, guidance on
    none = invert(builtin, scene, "spdinv", settings={"rounds": 0})
    assert torch.equal(none.pivots, npi.pivots) and none.cost.unet_backward == 0
    # the fixed-point residual ||z - F(z)|| of step 0 (the noisiest), solved vs the DDIM estimate
    from redraft.inversions.spdinv import fixed_point_map

    schedule = builtin.schedule(STEPS)
    cond = spd.prompt_embedding[None]
    with torch.no_grad():
        residual = [(p[0][None] - fixed_point_map(builtin.unet, schedule, 0, p[0][None], p[1][None], cond)).pow(2).mean()
                    for p in (spd.pivots, npi.pivots)]
    assert residual[0] < residual[1] / 2


@pytest.mark.parametrize("method, invert_per_step, replay_per_step, edit_per_step", [
    ("edit-friendly", 2, 2, 4),  # uncond + cond at x_t; an edit: 2 branches x (uncond, cond)
    ("edict", 4, 4, 8),          # 2 chains x (uncond, cond), both directions; an edit: 2 branches of that
    ("proxnpi", 1, 1, 3),        # NPI: cond only (the source is its own negative); edit: source + target x 2
    ("spdinv", None, 1, 3),      # 1 F + rounds x (1 F + 1 B) per step; edits as ProxNPI
])
def test_exact_unet_pass_counts(builtin, default, method, invert_per_step, replay_per_step, edit_per_step):
    inv = default(method)
    if invert_per_step is None:
        assert inv.cost.unet_forward == STEPS + inv.cost.unet_backward
        assert STEPS <= inv.cost.unet_backward <= STEPS * 25  # at least one round per step: DDIM is no fixed point
    else:
        assert (inv.cost.unet_forward, inv.cost.unet_backward) == (invert_per_step * STEPS, 0)
    builtin.unet.reset()
    builtin.replay([inv], progress=False)
    assert (builtin.unet.forward, builtin.unet.backward) == (replay_per_step * STEPS, 0)
    result = builtin.edit(inv, TARGET, progress=False)
    assert (result.unet_forward, result.unet_backward) == (edit_per_step * STEPS, 0)


def test_edit_friendly_skip_and_edict_guidance_one_counts(builtin, scene):
    """T_skip steps are not run at all; EDICT at guidance 1 needs one pass per chain and step."""
    ef = invert(builtin, scene, "edit-friendly")
    result = builtin.edit(ef, TARGET, skip_steps=0.4, progress=False)
    assert result.unet_forward == 4 * (STEPS - 2)
    edict = invert(builtin, scene, "edict", guidance_scale=1.0)
    assert edict.cost.unet_forward == 2 * STEPS


@pytest.mark.parametrize("method, settings, extras", [
    ("edit-friendly", {"seed": 4}, {"noise_maps": (STEPS, torch.float32)}),
    ("edict", {"mix": 0.9}, {"pivots_y": (STEPS + 1, torch.float64)}),
    ("spdinv", {"rounds": 2, "quantile": 0.6}, {}),
])
def test_save_load_keeps_the_extras_and_reconstructs_the_same(builtin, scene, tmp_path, method, settings, extras):
    """The file keeps each method's tensors (dtype included: EDICT's chains are float64) and its settings,
    which the replay reads (a lost `mix` would replay EDICT's inverse with another p)."""
    inv = invert(builtin, scene, method, settings=settings)
    loaded = Inversion.load(inv.save(tmp_path / f"{method}.safetensors"))
    assert set(loaded.extras) == set(extras)
    for name, (length, dtype) in extras.items():
        assert loaded.extras[name].shape[0] == length and loaded.extras[name].dtype == dtype
        assert torch.equal(loaded.extras[name], inv.extras[name])
    assert loaded.pivots.dtype == inv.pivots.dtype and torch.equal(loaded.pivots, inv.pivots)
    assert {k: loaded.options[k] for k in settings} == settings
    assert torch.equal(builtin.replay([loaded], progress=False), builtin.replay([inv], progress=False))
    if method == "edict":  # the setting matters: replayed with the default p instead, it is no longer exact
        defaults = Inversion(**{**loaded.__dict__, "options": {}})
        assert not torch.allclose(builtin.replay([defaults], progress=False), builtin.replay([loaded], progress=False),
                                  atol=1e-3)


def test_a_file_without_its_extras_is_refused(builtin, scene, tmp_path):
    inv = invert(builtin, scene, "edit-friendly")
    stripped = Inversion(**{**inv.__dict__, "extras": {}})
    with pytest.raises(InputError, match="noise_maps"):
        Inversion.load(stripped.save(tmp_path / "stripped.safetensors"))


@pytest.mark.parametrize("controls, words", [
    (dict(direct=True), ["Direct Inversion", "direct off"]),
    (dict(layout_guidance=1.0), ["layout", "layout_guidance at 0"]),
    (dict(renoise_step=0.5), ["re-noised", "renoise_step unset"]),
])
def test_edict_refuses_what_its_coupled_steps_cannot_invert(builtin, scene, controls, words):
    inv = invert(builtin, scene, "edict")
    with pytest.raises(InputError) as err:
        builtin.edit(inv, TARGET, progress=False, **controls)
    for w in words:
        assert w in str(err.value)


def test_unknown_names_list_the_known_ones(builtin, scene):
    image = world.render(scene)
    builtin.unet.reset()
    with pytest.raises(InputError) as err:
        builtin.invert(image, scene.prompt(), method="edict2", progress=False)
    assert all(m in str(err.value) for m in METHODS)
    with pytest.raises(InputError) as err:
        builtin.invert(image, scene.prompt(), method="edict", settings={"p": 0.9}, progress=False)
    assert "p" in str(err.value) and "mix (default 0.93)" in str(err.value)
    with pytest.raises(InputError, match="0.5 < p <= 1"):
        builtin.invert(image, scene.prompt(), method="edict", settings={"mix": 0.3}, progress=False)
    with pytest.raises(InputError, match="takes no settings"):
        builtin.invert(image, scene.prompt(), method="ddim", settings={"mix": 0.9}, progress=False)
    assert builtin.unet.forward == 0  # refused before any work
