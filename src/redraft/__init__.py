"""redraft: describe, invert and edit images with Stable Diffusion.

The package follows the data flow, image -> describe -> invert -> edit -> image:

    io/          images and files in and out, model folders, saved inversions, grids
    describe/    the prompt behind an image (Reverse Stable Diffusion)
    core/        the diffusion maths: DDIM steps, the one sampling loop, prompt encoding
    inversions/  the trajectory that regenerates an image (DDIM, null-text, negative-prompt, Direct)
    p2p/         Prompt-to-Prompt: edit controls, attention processors, LocalBlend, injections
    editor.py    `Editor`, which ties them together; `load` opens a model
    eval/        metrics;  shapes/  the built-in world and its model;  bench/  benchmarks
    apps/        the command line, batch runs, the web app and the demo (nothing imports them)
"""

from . import _moved
from .describe.model import Description
from .editor import Editor, load
from .errors import InputError
from .io.inversion_file import Cost, Inversion

_moved.install()

__all__ = ["load", "Editor", "Inversion", "Cost", "InputError", "Description"]
