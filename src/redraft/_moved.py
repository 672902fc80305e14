"""Old module paths (before the package was laid out as core / inversions / p2p / io / eval / apps),
kept importable for one release with a DeprecationWarning. `import redraft.edit` gives the very
module `redraft.p2p.controls` (so patching either name patches both)."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

MOVED = {
    "redraft.ddim": "redraft.core.ddim",
    "redraft.sampling": "redraft.core.sampling",
    "redraft.prompts": "redraft.core.prompts",
    "redraft.invert": "redraft.inversions.null_text",
    "redraft.words": "redraft.p2p.tokens",
    "redraft.edit": "redraft.p2p.controls",
    "redraft.attention": "redraft.p2p.attention",
    "redraft.guidance": "redraft.p2p.layout",
    "redraft.features": "redraft.p2p.features",
    "redraft.image": "redraft.io.image",
    "redraft.files": "redraft.io.files",
    "redraft.checkpoints": "redraft.io.checkpoints",
    "redraft.loading": "redraft.io.loading",
    "redraft.inversion": "redraft.io.inversion_file",
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
        warnings.warn(f"{spec.name} moved to {new}; the old name goes in the next release.",
                      DeprecationWarning, stacklevel=2)
        module = importlib.import_module(new)
        self._spec = module.__spec__  # the import machinery sets __spec__ to the old name's: put it back
        return module

    def exec_module(self, module):
        module.__spec__ = self._spec

    def get_code(self, name):  # `python -m redraft.cli` runs the new module's code
        new = MOVED[name]
        return importlib.util.find_spec(new).loader.get_code(new)


def install() -> None:
    if not any(isinstance(f, MovedModules) for f in sys.meta_path):
        sys.meta_path.append(MovedModules())
