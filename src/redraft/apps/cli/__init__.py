"""The `redraft` command line: a thin layer over the Python API (`redraft --help`)."""

from . import bench, images, jobs, train  # noqa: F401  (each registers its commands on `main`)
from .common import main

__all__ = ["main"]

if __name__ == "__main__":
    main()
