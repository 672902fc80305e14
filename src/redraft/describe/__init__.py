"""Predict the prompt behind an image (Croitoru et al., "Reverse Stable Diffusion", CVIU 2024).

The model-independent pieces, one small module each (import them directly: this file imports
none of them, and only `embed` loads transformers):

- `vocabulary`: prompt normalisation, the word vocabulary and its multi-hot targets.
- `heads`: the joint regression + classification heads, the paper's three configurations.
- `loss`: cosine + 0.1 x BCE + Huber.
- `curriculum`: difficulty scores from a warm-up run and the easy-to-hard stages.
- `data`: (image, prompt) readers for a folder, DiffusionDB and the shapes world.
- `embed`: the all-MiniLM-L6-v2 sentence embedder, the target space.
- `retrieval`: nearest known prompts, re-ranked by the predicted words.

The model and its training:

- `backbones`: image -> features; any transformers image model, or the diffusion U-Net's encoder.
- `model`: `Describer` (backbone + heads + vocabulary + prompt bank) and `Description`; one folder.
- `train`: `redraft train describer` (accelerate; AdamW, cosine annealing, curriculum, resume).
- `discovery`: a fine-tuned U-Net encoder put back into the diffusion model (the paper's discovery).
"""
