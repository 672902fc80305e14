"""The one error type users see: it says what is wrong and what to do about it."""


class InputError(ValueError):
    """Bad input from the user (an image, a prompt, a model folder, a file): the message names the fix."""
