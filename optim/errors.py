"""The one error type the pack raises for problems a user can fix."""


class QwenFitError(ValueError):
    """A problem with the user's input, files or settings.

    The message always says what is wrong and how to fix it; ComfyUI shows it verbatim.
    """
