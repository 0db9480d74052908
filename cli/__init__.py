"""The command line: every option of train.py and test.py (``config``) and the one-line errors
every entry point reports (``errors``)."""
