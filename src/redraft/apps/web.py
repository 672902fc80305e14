"""`redraft serve`: a web page over the `Editor` (Gradio), on this machine only by default.

Upload an image (or pick a held-out shapes scene), describe it, invert it, edit its prompt, look at
the per-word attention maps, and download the pictures and the inversion. The page is a thin layer:
every picture comes from `Editor.invert`, `Editor.edit` and `Editor.word_maps`. A mask painted with the
brush over the image confines the edit (`Editor.edit(mask=...)`, docs/region-edits.md). An inversion is kept
in the session, keyed by (model, image, source prompt, method, steps), so a second edit of the same
image does not invert it again (and an inversion by another model, or model family, is never reused); a
saved inversion can be uploaded instead of the image.

Gradio's analytics are switched off before it is imported: the app makes no network requests.
"""

from __future__ import annotations

import functools
import hashlib
import html
import inspect
import logging
import os
import tempfile
from pathlib import Path

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # no telemetry (the Blocks also get analytics_enabled=False)
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image, UnidentifiedImageError  # noqa: E402

from ..io.draw import grid  # noqa: E402
from ..errors import InputError  # noqa: E402
from ..io.files import save_image  # noqa: E402
from ..io.image import MAX_PIXELS, check_size, load_image  # noqa: E402
from ..inversions import METHODS  # noqa: E402
from ..io.inversion_file import Inversion  # noqa: E402
from ..io.loading import BUILTIN  # noqa: E402
from ..io.mask import crop_like, load_mask  # noqa: E402
from ..p2p.region import KEEP_OUTSIDE, check_keep_outside, stop_step  # noqa: E402
from ..eval.metrics import psnr  # noqa: E402
from ..p2p.controls import Controls, to_text  # noqa: E402

log = logging.getLogger(__name__)

FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")  # what an upload may be (PIL's names)
MAX_UPLOAD = "100mb"  # any one uploaded file (a 50-step SD inversion is about 16 MB)
KEPT_INVERSIONS = 3  # per browser session


def shown(fn):
    """Callbacks: a user's mistake (InputError) becomes its message in the page, anything else a short
    message too; the traceback goes to the server's log only."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except InputError as e:
            raise gr.Error(html.escape(str(e), quote=False), print_exception=False) from None
        except Exception as e:
            log.exception("redraft serve: %s failed", fn.__name__)
            raise gr.Error(html.escape(f"unexpected failure ({type(e).__name__}: {e}); the server's log has "
                                       f"the details.", quote=False), print_exception=False) from None

    return wrapper


def open_upload(path: str | Path, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """An uploaded file -> an RGB image, after checking its type and pixel count from its header (the
    one pixel cap of every front-end, `io.image.MAX_PIXELS`)."""
    try:
        with Image.open(path) as im:
            kind = im.format
    except (Image.DecompressionBombError, UnidentifiedImageError, OSError):
        kind = None  # check_size says which
    if kind is not None and kind not in FORMATS:
        raise InputError(f"{kind} images are not accepted; upload one of {', '.join(FORMATS)}.")
    check_size(path, max_pixels)
    return load_image(path, max_pixels)


def stacked(pictures: list[Image.Image]) -> Image.Image:
    """Pictures one under the other, on white, left-aligned."""
    canvas = Image.new("RGB", (max(p.width for p in pictures), sum(p.height for p in pictures)), "white")
    y = 0
    for p in pictures:
        canvas.paste(p, (0, y))
        y += p.height
    return canvas


def layer_alpha(layer) -> np.ndarray:
    """One ImageEditor layer (a PIL image, an RGBA array or a file) -> its alpha in [0, 1] (1: painted)."""
    if isinstance(layer, (str, Path)):
        check_size(layer, MAX_PIXELS)
        with Image.open(layer) as im:
            layer = im.convert("RGBA")
    if isinstance(layer, Image.Image):
        return np.asarray(layer.convert("RGBA").getchannel("A"), dtype=np.float32) / 255
    a = np.asarray(layer)
    if a.ndim != 3 or a.shape[-1] != 4:
        raise InputError(f"a painted layer is an RGBA picture; got an array of shape {a.shape}.")
    return a[..., 3].astype(np.float32) / 255


def painted_mask(value: dict | None) -> np.ndarray | None:
    """The brush layers of a gr.ImageEditor value -> a mask [H, W] (1 where any layer is painted, 0 where
    none is), or None when nothing is painted (no mask). `io.mask.load_mask` judges it afterwards."""
    layers = [layer for layer in (value or {}).get("layers") or [] if layer is not None]
    alphas = [layer_alpha(layer) for layer in layers]
    if len({a.shape for a in alphas}) > 1:
        raise InputError("the painted layers differ in size; press Clear mask and paint again.")
    painted = np.max(alphas, axis=0) > 0 if alphas else None
    return painted.astype(np.float32) if painted is not None and painted.any() else None


def overlay(image: Image.Image, mask: np.ndarray) -> Image.Image:
    """The image with the mask's may-change region tinted magenta (the page's brush colour)."""
    a = np.asarray(image, dtype=np.float32)
    m = np.asarray(mask, dtype=np.float32)[..., None] * 0.6
    return Image.fromarray((a * (1 - m) + np.array([255, 0, 255], np.float32) * m).round().astype(np.uint8))


def examples(n: int = 4) -> list[tuple[Image.Image, str]]:
    """Held-out shapes scenes (never seen in training) and their prompts."""
    from ..shapes import world

    return [(world.render(s), s.prompt()) for s in world.scenes(0, n, split="test")]


def control_inputs(start: Controls) -> dict[str, gr.components.Component]:
    """One input per control of the `Controls` schema, in its order, starting at `start`'s values:
    bounded numbers are sliders, other numbers boxes (empty: unset), the kind a menu, the rest text in
    the schema's forms (`p2p.controls.parse`)."""
    boxes = {}
    for name, spec, _ in Controls.fields():
        value, label, elem_id = getattr(start, name), f"{name}: {spec.help}", f"control-{spec.flag}"
        if spec.type == "choice":
            auto = [("auto (chosen from the prompts)", "auto")] if spec.optional else []
            boxes[name] = gr.Dropdown([*auto, *((c, c) for c in spec.choices)],
                                      value=value or "auto", label=label, elem_id=elem_id)
        elif spec.type == "number" and not spec.optional and spec.range and spec.range[1] is not None:
            boxes[name] = gr.Slider(spec.range[0], spec.range[1] - (0.01 if spec.high_open else 0), value=value,
                                    step=0.01, label=label, elem_id=elem_id)
        elif spec.type in ("number", "integer"):
            boxes[name] = gr.Number(value=value, precision=0 if spec.type == "integer" else None, label=label,
                                    elem_id=elem_id)
        else:
            boxes[name] = gr.Textbox(value=to_text(name, value), label=label, elem_id=elem_id)
    return boxes


def box_value(name: str, value):
    """A control input's value for `Controls.from_strings`: an emptied box of an optional control is None."""
    return "none" if value is None and Controls.spec(name).optional else value


class App:
    """The page's callbacks, over one `Editor`. Each is a plain function that tests call directly.

    `cache` is the session's {key: Inversion} (a gr.State), key = (model family and fingerprint, image
    digest, prompt, method, steps);
    files for download are written under `workdir` (one folder per edit), removed when the app is.
    """

    def __init__(self, editor, max_pixels: int = MAX_PIXELS):
        self.editor, self.max_pixels = editor, max_pixels
        self._workdir = tempfile.TemporaryDirectory(prefix="redraft-serve-")
        self.workdir = Path(self._workdir.name)

    def key(self, image: Image.Image, prompt: str, method: str, steps: int) -> tuple:
        """What an inversion depends on: the model (its family and fingerprint: an SD inversion is never
        reused on SDXL, nor one model's on another), the model-sized pixels, the prompt, the method, the steps."""
        pixels = np.asarray(self.editor.prepare(image))
        digest = hashlib.sha256(pixels.tobytes() + str(pixels.shape).encode()).hexdigest()
        return self.editor.family, self.editor.fingerprint, digest, prompt, method, int(steps)

    # ------------------------------------------------------------------ callbacks

    @shown
    def check_upload(self, value) -> None:
        """On upload: refuse a file that is not an allowed picture, or that is too large."""
        path = value.get("path") if isinstance(value, dict) else value
        if path:
            open_upload(path, self.max_pixels)

    def mask_canvas(self, value) -> dict | None:
        """The brush's canvas for a new image (or Clear mask): the image as background, nothing painted.
        An upload that is not a picture leaves it empty (`check_upload` says why)."""
        try:
            image = self.image(value)
        except InputError:
            return None
        return {"background": image, "layers": [], "composite": image}

    @shown
    def describe(self, image_path: str | dict | None) -> str:
        """The source prompt predicted from the image (`Editor.describe`)."""
        image = self.image(image_path)
        return self.editor.describe(image).prompt

    @shown
    def use_inversion(self, path: str | None, cache: dict | None):
        """A saved inversion uploaded: show its image and settings, and keep it for the next edit."""
        if not path:
            return gr.update(), gr.update(), gr.update(), gr.update(), cache, ""
        inversion = Inversion.load(path)
        inversion.check_compatible(self.editor.fingerprints, self.editor.model_id, family=self.editor.family)
        image = Image.fromarray(inversion.image)
        cache = self.remember(cache, self.key(image, inversion.prompt, inversion.method, inversion.steps), inversion)
        status = (f"Loaded an inversion ({inversion.method}, {inversion.steps} steps) of "
                  f"“{inversion.prompt}”: edits of this image will not invert it again.")
        steps = gr.update(value=inversion.steps, maximum=max(200, inversion.steps))
        return image, inversion.prompt, inversion.method, steps, cache, status

    @shown
    def edit(self, cache: dict | None, image_path: str | None, prompt: str, method: str, steps: int,
             targets: str, controls: dict | None = None, mask_layers: dict | None = None,
             keep_outside: str = "pixels", mask_stop: float | None = None, progress=gr.Progress(track_tqdm=True)):
        """Invert (or reuse the session's inversion), edit towards each target line, draw the maps.

        `controls`: {control name or manifest column: value or text} as the page's inputs give them
        (`control_inputs`, which start at the model's recipe, `p2p.recipe`); the ones changed from where
        they started override the recipe, which still chooses per kind of edit the rest. `mask_layers`: the
        brush's ImageEditor value (painted = may change; nothing painted: no mask), passed with
        `keep_outside` and `mask_stop` (None: the recipe's) to `Editor.edit` (Blended Latent Diffusion,
        docs/region-edits.md). Returns (gallery, attention maps, PNG files, inversion file, cache, status).
        """
        image = self.image(image_path)
        prompt = (prompt or "").strip()
        targets_list = [t.strip() for t in (targets or "").splitlines() if t.strip()]
        if not prompt:
            raise InputError("write the source prompt (what the image shows), or press Describe.")
        if not targets_list:
            raise InputError("write a target prompt: the source prompt with the words you want changed.")
        if method not in METHODS:
            raise InputError(f"unknown inversion method {method!r}; choose one of {', '.join(METHODS)}.")
        start = self.editor.recipe.defaults()
        chosen = Controls.from_strings(controls or {}, base=start)
        overrides = {n: getattr(chosen, n) for n, _, _ in Controls.fields() if getattr(chosen, n) != getattr(start, n)}
        mask = painted_mask(mask_layers)
        if mask is not None:  # judged before any UNet pass; cropped as the image is (`Editor.prepare`)
            load_mask(mask, image.size)
            check_keep_outside(keep_outside)
            if mask_stop is not None:
                stop_step(float(mask_stop), 1)
            mask = crop_like(mask, image.size, self.editor.resolution, multiple=self.editor.pipeline.vae_scale_factor)
        key = self.key(image, prompt, method, int(steps))
        cache = dict(cache or {})
        inversion = cache.get(key)
        if inversion is None:
            progress(0, desc=f"inverting ({method}, {int(steps)} steps)")
            inversion = self.editor.invert(image, prompt, method=method, steps=int(steps))
            c = inversion.cost
            how = f"Inverted ({method}, {inversion.steps} steps) in {c.seconds:.1f} s, {c.unet_forward} UNet passes"
        else:
            how = f"Reused the session's inversion ({method}, {inversion.steps} steps): no inverting"
        cache = self.remember(cache, key, inversion)
        progress(0.5, desc="editing")
        region = dict(mask=mask, keep_outside=keep_outside,
                      mask_stop=None if mask_stop is None else float(mask_stop)) if mask is not None else {}
        result = self.editor.edit(inversion, targets_list, **overrides, **region)
        maps = stacked([self.editor.word_maps(result, row=b).draw(cell=128) for b in range(len(result))])
        source = Image.fromarray(inversion.image)

        out = Path(tempfile.mkdtemp(prefix="edit-", dir=self.workdir))
        meta = result.metadata(method=method, steps=inversion.steps, model=self.editor.model_id)
        names = ["input", f"reconstruction-{method}"] + [f"edit-{k}" for k in range(1, len(targets_list) + 1)]
        captions = [f"input: {inversion.prompt}", f"reconstruction ({method})"] + [f"edit: {t}" for t in targets_list]
        pictures = [source, *result]
        paths = [str(save_image(im, out / f"{n}.png", metadata=meta if k > 1 else None))
                 for k, (im, n) in enumerate(zip(pictures, names))]
        grid_path = str(save_image(grid(pictures, captions), out / "grid.png", metadata=meta))
        extra, where = [], ""
        if result.region is not None:  # the mask used (at the model's size), alone and over the input
            m = result.region.mask
            kept = "the input's pixels" if keep_outside == "pixels" else "the latent blend's decoding"
            paths.append(str(save_image(overlay(source, m), out / "mask-over-input.png")))
            captions.append(f"mask (magenta: may change; outside: {kept})")
            extra.append(str(save_image(Image.fromarray((m * 255).round().astype(np.uint8)), out / "mask.png")))
            where = (f"; the painted mask ({m.mean():.0%} of the image) confined the edit (latent blend over "
                     f"{result.region.mask_stop:.0%} of the steps; outside it {kept})")
        maps_path = str(save_image(maps, out / "attention.png"))
        in_effect = [result.controls_of(k) for k in range(1, len(result))]  # per edit: the recipe chooses by kind
        controls_paths = [str(c.save(out / f"edit-{k}-controls.json")) for k, c in enumerate(in_effect, start=1)]
        inversion_path = str(inversion.save(out / f"inversion-{method}-{inversion.steps}.safetensors"))
        said = []
        for k, c in enumerate(in_effect, start=1):
            changed = c.changed()
            text = ", ".join(f"{n} {v}" for n, v in changed.items()) if changed else "the paper's defaults"
            said.append(text if len(in_effect) == 1 else f"edit {k}: {text}")
        status = (f"{how}; reconstruction PSNR {psnr(source, result[0]):.1f} dB against the input{where}; controls: "
                  + "; ".join(said) + ".")
        return (list(zip(paths, captions)), maps_path, [*paths, *extra, grid_path, maps_path, *controls_paths],
                inversion_path, cache, status)

    # ------------------------------------------------------------------ helpers

    def image(self, path: str | dict | None) -> Image.Image:
        """The uploaded image: a path, or Gradio's unprocessed file value ({"path": ...}), which the
        events take so that every client's bad upload meets redraft's checks, not Gradio's."""
        path = path.get("path") if isinstance(path, dict) else path
        if not path:
            raise InputError("upload an image first (or pick one of the examples).")
        return open_upload(path, self.max_pixels)

    @staticmethod
    def remember(cache: dict | None, key: tuple, inversion: Inversion) -> dict:
        """Keep the newest KEPT_INVERSIONS inversions of the session (the one used last goes to the end)."""
        cache = dict(cache or {})
        cache.pop(key, None)
        cache[key] = inversion
        while len(cache) > KEPT_INVERSIONS:
            cache.pop(next(iter(cache)))
        return cache


CSS = """
.pixelated img { image-rendering: pixelated; }  /* small model images scaled up stay sharp */
#image img { width: 100%; height: 100%; object-fit: contain; }
"""


def build(editor, *, max_pixels: int = MAX_PIXELS) -> gr.Blocks:
    """The page (a gr.Blocks); `serve` launches it."""
    app = App(editor, max_pixels)
    model = "the built-in shapes model" if editor.model_id == BUILTIN else f"`{editor.model_id}`"
    small = ["pixelated"] if editor.resolution < 256 else []
    brush = max(2, round(editor.resolution / 20))  # radius in image px: 3 on the built-in model, 26 on SD
    with gr.Blocks(title="redraft", analytics_enabled=False, delete_cache=(3600, 24 * 3600)) as page:
        page.redraft = app  # keeps the work folder alive as long as the page
        cache = gr.State({})
        gr.Markdown(f"# redraft\nEdit an image by editing the text that describes it (model: {model}).")
        with gr.Row():
            with gr.Column():
                image = gr.Image(label="image", type="filepath", image_mode=None, format="png", height=256,
                                 sources=["upload", "clipboard"], elem_id="image", elem_classes=small)
                with gr.Accordion("or reuse a saved inversion", open=False):
                    saved = gr.File(label="inversion (.safetensors) downloaded earlier", file_types=[".safetensors"],
                                    height=120, elem_id="saved-inversion")
                with gr.Row():
                    prompt = gr.Textbox(label="source prompt (what the image shows)", scale=4, elem_id="prompt")
                    describe = gr.Button("Describe", scale=1, elem_id="describe")
                example_rows = [[str(save_image(im, app.workdir / "examples" / f"scene-{k}.png")), p]
                                for k, (im, p) in enumerate(examples())]
                gr.Examples(example_rows, [image, prompt], label="examples: held-out shapes scenes")
                with gr.Row():
                    method = gr.Radio(list(METHODS), value="negative-prompt", label="inversion", elem_id="method")
                    steps = gr.Slider(1, 200, value=50, step=1, label="steps", elem_id="steps")
                targets = gr.Textbox(label="target prompt (one per line for several edits)", lines=2,
                                     elem_id="targets")
                with gr.Accordion("confine the edit to a region: paint a mask over the image", open=False,
                                  elem_id="region"):
                    mask_box = gr.ImageEditor(label="brush = may change (nothing painted: no mask)", type="pil",
                                              image_mode="RGBA", format="png", sources=(), transforms=(),
                                              layers=gr.LayerOptions(allow_additional_layers=False),
                                              # Gradio's "auto" size is a fixed 25 px radius: most of a 64 px image
                                              brush=gr.Brush(colors=[("#ff00ff", 0.6)], color_mode="fixed",
                                                             default_size=brush),
                                              eraser=gr.Eraser(default_size=brush),
                                              height=320, elem_id="mask", elem_classes=small)
                    with gr.Row():
                        keep_outside = gr.Radio(list(KEEP_OUTSIDE), value="pixels", elem_id="keep-outside",
                                                label="outside the mask: the input's pixels, or the latent blend only")
                        mask_stop = gr.Number(None, minimum=0, maximum=1, step=0.05, elem_id="mask-stop",
                                              label="mask_stop: fraction of the steps blended (empty: the "
                                                    "model's recipe for the kind of edit; 1: all)")
                    clear_mask = gr.Button("Clear mask", size="sm", elem_id="clear-mask")
                with gr.Accordion("edit controls (they start at the model's recipe, which also adapts them to "
                                  "the kind of edit; what you change is kept as you set it)", open=False):
                    control_boxes = control_inputs(editor.recipe.defaults())
                run = gr.Button("Edit", variant="primary", elem_id="edit")
            with gr.Column():
                status = gr.Markdown(elem_id="status")
                gallery = gr.Gallery(label="input, reconstruction and edits", columns=3, rows=1, format="png",
                                     height="auto", object_fit="contain", elem_id="results", elem_classes=small)
                attention = gr.Image(label="per-word attention maps (source, then each edit)", format="png",
                                     interactive=False, elem_id="attention")
                files = gr.File(label="download the pictures (PNG)", file_count="multiple", elem_id="files")
                inversion_file = gr.File(label="download the inversion (.safetensors): upload it later to "
                                         "edit again without inverting", elem_id="inversion")
        model_queue = dict(concurrency_id="model", concurrency_limit=1)  # one job on the model at a time
        image.upload(app.check_upload, image, None, preprocess=False).failure(lambda: None, None, image)
        image.change(app.mask_canvas, image, mask_box, preprocess=False)
        clear_mask.click(app.mask_canvas, image, mask_box, preprocess=False)
        describe.click(app.describe, image, prompt, api_name="describe", preprocess=False, **model_queue)
        saved.upload(app.use_inversion, [saved, cache], [image, prompt, method, steps, cache, status])
        shown_inputs = [cache, image, prompt, method, steps, targets]
        region_inputs = [keep_outside, mask_stop, mask_box]
        inputs = [*shown_inputs, *control_boxes.values(), *region_inputs]

        def on_edit(*values):
            """The Edit button, and the API's /edit: the page's inputs in order (the region's last, optional),
            then the progress tracker. The events pass values unprocessed (uploads meet redraft's checks);
            the brush's value is Gradio's to unpack (its layers come as files or as blobs)."""
            *values, progress = values
            n = 6 + len(control_boxes)
            keep, stop, layers = values[n:n + 3] if len(values) > n else ("pixels", None, None)  # region: optional
            painted = mask_box.preprocess(mask_box.data_model.model_validate(layers)) if layers else None
            return app.edit(*values[:6], progress=progress, mask_layers=painted, keep_outside=keep, mask_stop=stop,
                            controls={name: box_value(name, v) for name, v in zip(control_boxes, values[6:n])})

        on_edit.__signature__ = inspect.Signature(  # the API's parameter names (Gradio reads the signature)
            [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD)
             for n in ("cache", "image", "prompt", "method", "steps", "targets", *control_boxes)]
            + [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=d)  # the region's: optional
               for n, d in (("keep_outside", "pixels"), ("mask_stop", None), ("mask", None))]
            + [inspect.Parameter("progress", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                 default=gr.Progress(track_tqdm=True))])
        page.redraft_inputs, page.redraft_edit = (shown_inputs, control_boxes), on_edit  # for tests
        page.redraft_region = region_inputs
        run.click(on_edit, inputs, [gallery, attention, files, inversion_file, cache, status], api_name="edit",
                  show_progress_on=gallery, preprocess=False, **model_queue)
    return page


def serve(editor, host: str = "127.0.0.1", port: int = 7860, *, block: bool = True):
    """Start the app on http://host:port; returns (page, url) (at once with `block=False`; `page.close()`)."""
    page = build(editor)
    page.queue()
    try:
        _, url, _ = page.launch(server_name=host, server_port=port, max_file_size=MAX_UPLOAD, ssr_mode=False,
                                mcp_server=False, share=False, css=CSS, prevent_thread_lock=not block)
    except OSError as e:
        raise InputError(f"cannot listen on {host}:{port} ({e}); choose another --port.") from None
    return page, url
