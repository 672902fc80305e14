"""Command-line options made from the `Controls` schema: one option per control, plus `--controls FILE`."""

from __future__ import annotations

import json

import click

from ...errors import InputError
from ...p2p.controls import UNSET, Controls, Spec, parse
from ...p2p.recipe import PAPER

METAVARS = {"choice": None, "weights": "WORD=FACTOR", "words": "WORD", "names": "NAME",
            "window": "F|START,END", "number": "NUMBER", "integer": "INTEGER"}


def option(name: str, spec: Spec, default) -> click.Option:
    """The option of one control. Its value is text parsed by the schema (None: not given), so that the
    errors and the accepted forms are the schema's; words and weights repeat (`--blend a --blend b`)."""
    many = spec.type in ("words", "names", "weights")
    shown = "unset" if default is None else json.dumps(default)
    more = " (repeatable)" if many else ""
    kind = click.Choice(spec.choices) if spec.type == "choice" else str
    return click.Option([f"--{spec.flag}", name], type=kind, multiple=many, default=None,
                        metavar=METAVARS[spec.type], help=f"{spec.help}{more} [default: {shown}]")


def control_options(*, generation: bool = False):
    """Decorate a command with every control's option (grouped as the schema is) and `--controls FILE`.
    `generation`: leave out the controls that need an inversion (skip_steps)."""

    def decorate(fn):
        fn.__click_params__ = getattr(fn, "__click_params__", [])
        chosen = [(n, s, d) for n, s, d in Controls.fields() if not (generation and s.needs_inversion)]
        for name, spec, default in reversed(chosen):
            fn.__click_params__.append(option(name, spec, default))
        fn.__click_params__.append(click.Option(
            ["--controls", "controls_file"], default=None, metavar="FILE|paper",
            help="start from the controls in this file (a .json saved by redraft, or a PNG it wrote, which "
                 "holds the controls that made it), or from the P2P paper's values with 'paper'; unset: the "
                 "model's editing recipe for each edit's kind. The options below override it field by field."))
        return fn

    return decorate


def controls_base(options: dict) -> tuple[Controls | str | None, dict]:
    """Pop the controls' options out of a command's keyword arguments: (what they start from: None for
    the model's recipe, "paper", or a file's `Controls`; {field: value} of each option given), checked
    now, before any work."""
    file = options.pop("controls_file", None)
    base = PAPER if file == PAPER else Controls.load(file) if file else None
    values = {}
    for name, spec, _ in Controls.fields():
        value = options.pop(name, None)
        if value is None or value == ():
            continue
        text = " ".join(value) if isinstance(value, tuple) else value
        try:
            parsed = parse(name, text)
            if parsed is not UNSET:
                Controls.make(**{name: parsed})
                values[name] = parsed
        except InputError as e:
            raise InputError(f"--{spec.flag} {text}: {e}") from None
    Controls.make(base if isinstance(base, Controls) else None, **values)
    return base, values
