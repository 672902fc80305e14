"""The shapes world and its built-in model."""
