"""The one exception type for errors a user can cause (the CLI maps it to exit code 2)."""


class PokeRLError(Exception):
    """A problem with the user's input or usage; the message says what to do."""
