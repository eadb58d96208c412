"""Generating and grading quadratic equations with worked solutions."""


class QuadlabError(Exception):
    """Bad input from a user (an option, a file, a directory). The command line prints the
    message as one line and exits 2, so the message says what is wrong and how to fix it."""
