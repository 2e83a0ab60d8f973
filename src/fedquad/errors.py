"""One exception type for user mistakes: the CLI prints its message on one line, exit status 2."""


class FedquadError(ValueError):
    """Bad input from a user (unknown model, impossible plan, malformed file, ...)."""
