"""Errors a user can cause, shaped for a one-line message at the edge."""


class LotteryError(Exception):
    """A mistake in input, configuration or environment that the user can fix.

    The CLI prints the message on one line and exits with code 2, without a traceback.
    """
