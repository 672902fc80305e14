"""The diffusion maths: the DDIM step (`ddim`), the one sampling loop (`sampling`), prompt encoding
(`prompts`), learning-rate schedules (`schedules`). No files, no front-ends."""
