"""redraft.metrics: PSNR, MSE, SSIM (whole, masked), PIE-Bench's background metrics vs the clean ones, RLE masks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from redraft.eval import metrics
from redraft.errors import InputError

C1, C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2


def _gauss(n: int, sigma: float = 1.5) -> np.ndarray:
    x = np.arange(n) - (n - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _naive_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Wang et al. 2004 straight from the definition: one weighted window at a time, no convolution."""
    h, w, c = a.shape
    n = min(11, h, w)
    n -= 1 - n % 2
    win = np.outer(_gauss(n), _gauss(n))
    vals = []
    for ch in range(c):
        x, y = a[..., ch].astype(np.float64), b[..., ch].astype(np.float64)
        for i in range(h - n + 1):
            for j in range(w - n + 1):
                px, py = x[i : i + n, j : j + n], y[i : i + n, j : j + n]
                mx, my = (win * px).sum(), (win * py).sum()
                vx, vy = (win * (px - mx) ** 2).sum(), (win * (py - my) ** 2).sum()
                cxy = (win * (px - mx) * (py - my)).sum()
                vals.append((2 * mx * my + C1) * (2 * cxy + C2) / ((mx**2 + my**2 + C1) * (vx + vy + C2)))
    return float(np.mean(vals))


def _textured(h: int = 48, w: int = 48, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 128 + 60 * np.sin(xx / 3.0) * np.cos(yy / 5.0)
    img = base[..., None] + rng.normal(0, 15, (h, w, 3))
    return np.clip(img, 0, 255).round().astype(np.uint8)


# ---------------------------------------------------------------- psnr / mse

def test_psnr_identical_is_inf():
    a = _textured()
    assert metrics.psnr(a, a.copy()) == math.inf
    assert metrics.mse(a, a.copy()) == 0.0


def test_psnr_and_mse_of_a_uniform_offset():
    a = np.full((8, 8, 3), 100, np.uint8)
    b = a + np.uint8(10)
    # MSE on [0, 255] is 100: PSNR = 10 log10(255^2 / 100)
    assert metrics.psnr(a, b) == pytest.approx(28.130803608679106, abs=1e-6)
    assert metrics.psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 100), abs=1e-6)
    assert metrics.mse(a, b) == pytest.approx(100 / 255**2, abs=1e-12)  # [0, 1] scale
    assert metrics.mse(np.zeros((2, 2, 3), np.uint8), np.full((2, 2, 3), 255, np.uint8)) == 1.0


def test_inputs_pil_torch_and_grayscale():
    a = np.full((8, 8, 3), 100, np.uint8)
    b = a + np.uint8(10)
    assert metrics.psnr(Image.fromarray(a), Image.fromarray(b)) == pytest.approx(28.130803608679106, abs=1e-6)
    assert metrics.psnr(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(28.130803608679106, abs=1e-6)
    assert metrics.psnr(a[..., 0], b[..., 0]) == pytest.approx(28.130803608679106, abs=1e-6)


def test_masked_psnr_ignores_changes_outside_the_mask():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 200, (24, 24, 3), dtype=np.uint8)
    mask = np.zeros((24, 24), bool)
    mask[4:12, 6:20] = True
    b = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)  # garbage outside the mask
    b[mask] = a[mask] + 5  # an offset of 5 inside it
    expected = 10 * math.log10(255**2 / 25)  # 34.1514 dB
    assert metrics.psnr(a, b, mask) == pytest.approx(expected, abs=1e-9)
    assert metrics.psnr(a, b, mask.astype(np.uint8)) == pytest.approx(expected, abs=1e-9)  # 0/1 works too
    assert metrics.mse(a, b, mask) == pytest.approx(25 / 255**2, abs=1e-12)
    assert metrics.psnr(a, b) < 20  # the garbage does count without the mask
    assert math.isnan(metrics.psnr(a, b, np.zeros((24, 24), bool)))  # nothing selected


# ---------------------------------------------------------------- ssim

def test_ssim_identical_is_one():
    a = _textured()
    assert metrics.ssim(a, a.copy()) == pytest.approx(1.0, abs=1e-12)


def test_ssim_matches_the_definition_window_by_window():
    rng = np.random.default_rng(2)
    a = rng.integers(0, 256, (14, 13, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-40, 41, a.shape), 0, 255).astype(np.uint8)
    assert metrics.ssim_map(a, b).shape == (4, 3, 3)  # the valid region only
    assert metrics.ssim(a, b) == pytest.approx(_naive_ssim(a, b), abs=1e-10)


def test_ssim_of_an_image_smaller_than_the_window():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, (8, 9, 3), dtype=np.uint8)  # 8 px -> a 7x7 window
    b = rng.integers(0, 256, (8, 9, 3), dtype=np.uint8)
    assert metrics.ssim_window(8, 9) == 7
    assert metrics.ssim_map(a, b).shape == (2, 3, 3)
    assert metrics.ssim(a, b) == pytest.approx(_naive_ssim(a, b), abs=1e-10)


def test_ssim_of_constant_images_is_the_luminance_term():
    a = np.full((16, 16, 3), 100, np.uint8)
    b = np.full((16, 16, 3), 110, np.uint8)
    # no variance: SSIM = (2 mu_a mu_b + C1) / (mu_a^2 + mu_b^2 + C1) = 22006.5025 / 22106.5025
    assert metrics.ssim(a, b) == pytest.approx(0.9954764440915066, abs=1e-9)


def test_ssim_decreases_with_noise_and_is_symmetric():
    a = _textured(64, 64)
    rng = np.random.default_rng(4)
    scores = []
    for sigma in (3, 15, 40, 120):
        b = np.clip(a + rng.normal(0, sigma, a.shape), 0, 255).round().astype(np.uint8)
        scores.append(metrics.ssim(a, b))
        assert metrics.ssim(b, a) == pytest.approx(scores[-1], abs=1e-12)
    assert scores == sorted(scores, reverse=True)
    assert scores[0] > 0.9
    assert scores[-1] < 0.5


def test_masked_ssim_ignores_changes_far_from_the_mask():
    a = _textured(40, 40)
    b = a.copy()
    b[:, 28:] = 255 - b[:, 28:]  # change columns 28.. only
    mask = np.zeros((40, 40), bool)
    mask[:, :20] = True  # windows of columns < 20 reach column 24 at most
    assert metrics.ssim(a, b, mask) == pytest.approx(1.0, abs=1e-12)
    assert metrics.ssim(a, b) < 0.9
    mask_near = np.zeros((40, 40), bool)
    mask_near[:, 20:26] = True  # windows here do see the change
    assert metrics.ssim(a, b, mask_near) < 1.0


# ---------------------------------------------------------------- PIE-Bench's way vs the clean way

def test_pie_bench_background_vs_clean_background():
    # 16x16, every pixel 100 in the source and 110 in the result; the left half is the edit region.
    a = np.full((16, 16, 3), 100, np.uint8)
    b = np.full((16, 16, 3), 110, np.uint8)
    edit = np.zeros((16, 16), bool)
    edit[:, :8] = True

    clean = metrics.background(a, b, edit)
    # only the background (128 pixels, all off by 10): MSE on [0, 255] = 100
    assert clean["psnr"] == pytest.approx(28.130803608679106, abs=1e-6)
    assert clean["mse"] == pytest.approx(0.0015378700499807767, abs=1e-12)  # 100 / 255^2
    assert clean["ssim"] == pytest.approx(0.9954764440915066, abs=1e-9)  # constant windows, as above

    pie = metrics.pie_bench_background(a, b, edit)
    # both images zeroed on the edit region, then the whole image: half the pixels off by 10, half equal,
    # MSE on [0, 255] = 50: PSNR 3.0103 dB higher, MSE halved
    assert pie["psnr"] == pytest.approx(31.141103565318918, abs=1e-6)
    assert pie["mse"] == pytest.approx(0.0007689350249903883, abs=1e-12)  # 50 / 255^2
    # SSIM: a window whose share of background weight is w sees 100 w / 110 w means, variances
    # 100^2 w(1-w), 110^2 w(1-w) and covariance 11000 w(1-w); the valid columns are 5..10 and the
    # background starts at column 8.
    g = _gauss(11)

    def s(w: float) -> float:
        v = w * (1 - w)
        return (22000 * w * w + C1) * (22000 * v + C2) / ((22100 * w * w + C1) * (22100 * v + C2))

    expected = np.mean([s(g[max(0, 8 - (j - 5)) :].sum()) for j in range(5, 11)])
    assert pie["ssim"] == pytest.approx(expected, abs=1e-9)
    assert pie["ssim"] != pytest.approx(clean["ssim"], abs=1e-3)

    am, bm = metrics.pie_bench_masked(a, b, edit)
    assert (am[:, :8] == 0).all() and (bm[:, :8] == 0).all()
    assert (am[:, 8:] == 100).all() and (bm[:, 8:] == 110).all()


def test_everything_edited_gives_nan_in_the_clean_way():
    a = np.full((12, 12, 3), 100, np.uint8)
    out = metrics.background(a, a + np.uint8(1), np.ones((12, 12), bool))
    assert all(math.isnan(v) for v in out.values())


# ---------------------------------------------------------------- RLE masks

def test_decode_rle_mask():
    # runs over the flattened 3x4 grid: 1..2, 6..8, 11..15 (cut at 11, the last cell)
    m = metrics.decode_rle_mask([1, 2, 6, 3, 11, 5], size=(3, 4))
    assert m.dtype == bool
    assert m.astype(int).tolist() == [
        [0, 1, 1, 0],
        [0, 0, 1, 1],
        [1, 0, 0, 1],
    ]
    framed = metrics.decode_rle_mask([1, 2, 6, 3, 11, 5], size=(3, 4), border=True)
    assert framed.astype(int).tolist() == [
        [1, 1, 1, 1],
        [1, 0, 1, 1],
        [1, 1, 1, 1],
    ]
    assert metrics.decode_rle_mask([], size=(2, 2)).sum() == 0
    assert metrics.decode_rle_mask([0, 4]).shape == (512, 512)
    with pytest.raises(InputError):
        metrics.decode_rle_mask([1, 2, 3], size=(3, 4))


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("fn", [metrics.psnr, metrics.mse, metrics.ssim])
def test_size_mismatch_raises(fn):
    a = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(InputError, match="differ in size"):
        fn(a, np.zeros((8, 9, 3), np.uint8))
    with pytest.raises(InputError, match="mask"):
        fn(a, a, np.ones((8, 9), bool))


def test_background_size_mismatch_and_bad_mask_raise():
    a = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(InputError):
        metrics.background(a, np.zeros((9, 8, 3), np.uint8), np.zeros((8, 8), bool))
    with pytest.raises(InputError):
        metrics.pie_bench_background(a, np.zeros((9, 8, 3), np.uint8), np.zeros((8, 8), bool))
    with pytest.raises(InputError, match="0/1"):
        metrics.background(a, a, np.full((8, 8), 255, np.uint8))
    with pytest.raises(InputError, match="uint8"):
        metrics.psnr(a.astype(np.float32), a.astype(np.float32))


# ---------------------------------------------------------------- learned metrics on tiny random weights

def _random_images(seed: int = 5, shape=(40, 48, 3)):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, shape, dtype=np.uint8), rng.integers(0, 256, shape, dtype=np.uint8)


def test_clip_score_is_100_times_the_clamped_cosine(tiny_clip_folder):
    from transformers import AutoProcessor

    scorer = metrics.ClipScore.load(tiny_clip_folder)
    model, processor = scorer.model, AutoProcessor.from_pretrained(tiny_clip_folder)
    a, _ = _random_images()

    def cosine(text: str) -> float:  # by hand, with transformers' own calls
        x = processor(text=[text], images=[Image.fromarray(a)], return_tensors="pt", padding=True)
        with torch.no_grad():
            ei = model.get_image_features(pixel_values=x["pixel_values"])
            et = model.get_text_features(input_ids=x["input_ids"], attention_mask=x["attention_mask"])
        ei, et = (getattr(e, "pooler_output", e) for e in (ei, et))
        return float(torch.nn.functional.cosine_similarity(ei, et))

    texts = ["a cat", "a photo of a red car", "the sea at night"]
    for flip in (False, True):  # this random model's cosines are all negative; flipped, all positive
        if flip:
            with torch.no_grad():
                model.text_projection.weight.neg_()
        for text in texts:
            cos = cosine(text)
            assert (cos > 0) == flip
            score = scorer(a, text)
            assert score == pytest.approx(100 * max(cos, 0.0), abs=1e-4)
            assert scorer(Image.fromarray(a), text) == score  # identical inputs, another type: the same score


def test_clip_score_with_a_mask_and_image_similarity(tiny_clip_folder):
    scorer = metrics.ClipScore.load(tiny_clip_folder)
    a, b = _random_images()
    whole = np.ones(a.shape[:2], bool)
    assert scorer.image_similarity(a, a.copy()) == pytest.approx(100.0, abs=1e-4)
    assert scorer.image_similarity(a, b) < 100 - 1e-2  # random weights: every image looks much alike
    assert scorer.image_similarity(a, b) == pytest.approx(scorer.image_similarity(b, a), abs=1e-4)
    # the mask keeps what it selects and blacks out the rest (PIE-Bench's "edited" CLIP score)
    half = np.zeros(a.shape[:2], bool)
    half[:, :24] = True
    masked = a * half[..., None]
    for text in ["a cat", "the sea at night"]:
        assert scorer(a, text, whole) == pytest.approx(scorer(a, text), abs=1e-6)
        assert scorer(a, text, half) == pytest.approx(scorer(masked, text), abs=1e-6)
    assert scorer.image_similarity(a, masked) < 100 - 1e-2
    with pytest.raises(InputError, match="tokens"):
        scorer(a, "cat " * 100)


@pytest.mark.parametrize("kind", ["vit", "dinov2"])
def test_structure_distance_zero_to_itself_positive_to_another(tmp_path, kind):
    from conftest import build_tiny_dino

    sd = metrics.StructureDistance.load(build_tiny_dino(tmp_path / kind, kind))
    a, b = _random_images()
    s = sd.self_similarity(a)
    tokens = 1 + (224 // 8) * (269 // 8)  # shorter side 48 -> 224 px, the other 40 -> 269: 28 x 33 patches + CLS
    assert s.shape == (tokens, tokens)
    assert torch.allclose(s.diagonal(), torch.ones(tokens), atol=1e-5)
    assert sd(a, a.copy()) == 0.0
    assert sd(a, b) > 1e-3
    assert sd(a, b) == pytest.approx(sd(b, a), rel=1e-6)
    # a slightly changed image is nearer than an unrelated one
    near = np.clip(a.astype(int) + 8, 0, 255).astype(np.uint8)
    assert 0 < sd(a, near) < sd(a, b)
    # PIE-Bench's pixel scale (0..255 into the ImageNet normalisation) gives another number
    assert sd(a, b, pie_bench=True) != pytest.approx(sd(a, b), rel=1e-3)


def test_structure_distance_uses_the_last_layer_keys(tiny_dino_folder):
    from transformers import ViTModel

    sd = metrics.StructureDistance.load(tiny_dino_folder)
    model = ViTModel.from_pretrained(tiny_dino_folder).eval()
    a, b = _random_images(seed=9, shape=(32, 32, 3))

    def keys(image):  # by hand: the last block's key projection of its layer-normed input
        with torch.no_grad():
            hidden = model(pixel_values=sd.pixels(image), output_hidden_states=True,
                           interpolate_pos_encoding=True).hidden_states[-2]
            block = model.layers[-1] if hasattr(model, "layers") else model.encoder.layer[-1]
            attention = block.attention
            key = attention.k_proj if hasattr(attention, "k_proj") else attention.attention.key
            return key(block.layernorm_before(hidden))[0]

    def similarity(k):
        k = k / k.norm(dim=-1, keepdim=True)
        return k @ k.T

    expected = float(((similarity(keys(a)) - similarity(keys(b))) ** 2).mean())
    assert sd(a, b) == pytest.approx(expected, rel=1e-5)
    assert sd.pixels(np.zeros((20, 100, 3), np.uint8)).shape == (1, 3, 96, 480)  # longer side capped at 480


@pytest.mark.parametrize("net", ["alex", "squeeze"])
def test_lpips_zero_to_itself_symmetric_and_masked(tmp_path, net):
    from conftest import build_tiny_lpips

    lp = metrics.Lpips.load(build_tiny_lpips(tmp_path / "lpips.safetensors", net))
    assert lp.net == net
    a = _textured(64, 64)
    b = a.copy()
    b[:, 40:] = 255 - b[:, 40:]  # change the right side only
    assert lp(a, a.copy()) == 0.0
    assert lp(a, b) > 0
    assert lp(a, b) == pytest.approx(lp(b, a), rel=1e-6)
    everything = np.ones((64, 64), bool)
    assert lp(a, b, everything) == pytest.approx(lp(a, b), rel=1e-6)
    left, right = np.zeros((64, 64), bool), np.zeros((64, 64), bool)
    left[:, :16], right[:, 40:] = True, True
    assert lp(a, b, left) < lp(a, b) < lp(a, b, right)
    assert math.isnan(lp(a, b, np.zeros((64, 64), bool)))
    # in the background functions: PIE-Bench's way scores the masked images, the clean way the masked maps
    edit = np.zeros((64, 64), bool)
    edit[:, 40:] = True
    assert metrics.background(a, b, edit, lpips=lp)["lpips"] == pytest.approx(lp(a, b, ~edit), rel=1e-6)
    pie = metrics.pie_bench_background(a, b, edit, lpips=lp)
    assert pie["lpips"] == pytest.approx(lp(*metrics.pie_bench_masked(a, b, edit)), rel=1e-6)
    with pytest.raises(InputError, match="32 px"):
        lp(a[:16, :16], b[:16, :16])


def test_lpips_first_layer_by_hand(tmp_path):
    """With only the first layer weighted, LPIPS is conv1 + ReLU, unit-normalised, weighted squared difference."""
    from safetensors.torch import load_file, save_file

    from conftest import build_tiny_lpips

    path = build_tiny_lpips(tmp_path / "lpips.safetensors", "alex", seed=3)
    tensors = load_file(str(path))
    for k in range(1, 5):
        tensors[f"lin{k}.model.1.weight"].zero_()
    save_file(tensors, str(path))
    lp = metrics.Lpips.load(path)
    a, b = _textured(48, 48, seed=1), _textured(48, 48, seed=2)

    def features(x):
        t = torch.from_numpy(x).permute(2, 0, 1)[None].float() / 127.5 - 1
        t = (t - torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)) / torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
        f = torch.relu(torch.nn.functional.conv2d(t, tensors["features.0.weight"], tensors["features.0.bias"], stride=4, padding=2))
        return f / (f.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)

    w = tensors["lin0.model.1.weight"].view(1, -1, 1, 1)
    expected = float((w * (features(a) - features(b)) ** 2).sum(1).mean())
    assert lp(a, b) == pytest.approx(expected, rel=1e-5)


def test_optional_scorers_report_why_they_are_unavailable(tmp_path, tiny_clip_folder):
    import pickle

    assert metrics.optional_scorer("clip", None) == "unavailable: no clip weights given"
    missing = metrics.optional_scorer("dino", str(tmp_path / "nowhere"))
    assert missing.startswith("unavailable: dino weights") and "no such file" in missing
    assert isinstance(metrics.optional_scorer("clip", str(tiny_clip_folder)), metrics.ClipScore)
    wrong = metrics.optional_scorer("lpips", str(tiny_clip_folder))  # a CLIP folder is no LPIPS file
    assert wrong.startswith("unavailable: lpips weights") and "not an LPIPS" in wrong

    # pickled weights are never loaded: unpickling this file would create `marker`
    marker = tmp_path / "unpickled"

    class Trap:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((tiny_clip_folder / "config.json").read_text())
    (pickled / "pytorch_model.bin").write_bytes(pickle.dumps(Trap()))
    (tmp_path / "lpips.pth").write_bytes(pickle.dumps(Trap()))
    for kind, source in [("clip", pickled), ("dino", pickled), ("lpips", tmp_path / "lpips.pth")]:
        assert metrics.optional_scorer(kind, str(source)).startswith("unavailable:")
    assert not marker.exists()
    with pytest.raises(InputError, match="safetensors"):
        metrics.Lpips.load(tmp_path / "lpips.pth")
    with pytest.raises(InputError, match="unknown learned metric"):
        metrics.optional_scorer("fid", "x")
