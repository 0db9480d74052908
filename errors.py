"""The one exception type the entry points turn into a one-line message and a non-zero exit."""


class UserError(Exception):
    """Bad input from the user (arguments, files, checkpoints, data not prepared).

    The message is a complete sentence that says what is wrong and what to do; train.py and
    test.py print it on one line and exit with status 1, without a traceback.
    """
