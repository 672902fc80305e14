"""Old module paths (before the package was laid out as core / inversions / p2p / io / eval / apps),
kept importable for one release with a DeprecationWarning. `import redraft.edit` gives the very
module `redraft.p2p.controls` (so patching either name patches both); an old module whose parts now
live in several modules is a new module holding their public names."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings

MOVED = {
    "redraft.ddim": "redraft.core.ddim",
    "redraft.sampling": "redraft.core.sampling",
    "redraft.prompts": "redraft.core.prompts",
    "redraft.invert": ("redraft.inversions.ddim", "redraft.inversions.null_text"),
    "redraft.words": "redraft.p2p.tokens",
    "redraft.edit": ("redraft.p2p.controls", "redraft.p2p.plan", "redraft.p2p.blend", "redraft.p2p.renoise"),
    "redraft.attention": "redraft.p2p.attention",
    "redraft.guidance": "redraft.p2p.layout",
    "redraft.features": "redraft.p2p.features",
    "redraft.image": "redraft.io.image",
    "redraft.files": "redraft.io.files",
    "redraft.checkpoints": "redraft.io.checkpoints",
    "redraft.loading": "redraft.io.loading",
    "redraft.inversion": ("redraft.io.inversion_file", "redraft.inversions"),
    "redraft.draw": "redraft.io.draw",
    "redraft.metrics": "redraft.eval.metrics",
    "redraft.cli": "redraft.apps.cli",
    "redraft.batch": "redraft.apps.batch",
    "redraft.app": "redraft.apps.web",
    "redraft.demo": "redraft.apps.demo",
}


class MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old name of `MOVED` and loads it as its new module."""

    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name in MOVED else None

    def create_module(self, spec):
        new = MOVED[spec.name]
        names = (new,) if isinstance(new, str) else new
        warnings.warn(f"{spec.name} moved to {' and '.join(names)}; the old name goes in the next release.",
                      DeprecationWarning, stacklevel=2)
        modules = [importlib.import_module(n) for n in names]
        if len(modules) == 1:
            self._spec = modules[0].__spec__  # the import machinery sets __spec__ to the old name's: put it back
            return modules[0]
        merged = types.ModuleType(spec.name, f"Moved to {', '.join(names)}.")
        for module in reversed(modules):
            merged.__dict__.update({k: v for k, v in vars(module).items() if not k.startswith("__")})
        self._spec = None
        return merged

    def exec_module(self, module):
        if self._spec is not None:
            module.__spec__ = self._spec

    def get_code(self, name):  # `python -m redraft.cli` runs the new module's code
        new = MOVED[name]
        new = new if isinstance(new, str) else new[0]
        spec = importlib.util.find_spec(new)
        if spec.submodule_search_locations is not None:  # a package: run its __main__
            new += ".__main__"
            spec = importlib.util.find_spec(new)
        return spec.loader.get_code(new)


def install() -> None:
    if not any(isinstance(f, MovedModules) for f in sys.meta_path):
        sys.meta_path.append(MovedModules())
