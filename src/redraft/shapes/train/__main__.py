"""`python -m redraft.shapes.train DIR`: train the built-in shapes model into DIR (resumes a stopped run)."""

import os
import sys

import torch

from . import train

if "OMP_NUM_THREADS" not in os.environ:
    torch.set_num_threads(2)
print(train(sys.argv[1]))
