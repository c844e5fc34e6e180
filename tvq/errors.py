"""The one exception type the command line turns into a one-line message and exit code 2."""


class TvqError(Exception):
    """A problem with the user's input (a file, an option, a scene), stated in one line.

    Library code raises it with a message that names the file or option and the problem; the CLI prints
    ``error: <message>`` on stderr and exits with code 2 (with ``--debug`` it shows the traceback).
    """
