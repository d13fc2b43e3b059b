"""The pack's two error types: problems a user can fix, and failures of the pack itself."""


class QwenFitError(ValueError):
    """A problem with the user's input, files or settings.

    The message always says what is wrong and how to fix it; ComfyUI shows it verbatim.
    """


class InternalError(RuntimeError):
    """A failure of QwenFit itself, never the user's input or files: the message says so and asks for a report."""

    def __init__(self, what: str) -> None:
        super().__init__(
            f"QwenFit internal error: {what} This is a bug in QwenFit, not a problem with your files or settings: "
            "please report it with the server log. Running the prompt again may work."
        )
