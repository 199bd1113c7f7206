"""Shared, paper-independent parts of the GAN zoo: data, images, run directories.

Everything a paper defines lives in its own script; this package holds only what no
paper is about. Scripts import it lazily (inside ``train``/``sample``), so that a
script's model and loss import with torch alone.
"""


class UserError(Exception):
    """A mistake the user can fix (bad path, bad flag, wrong checkpoint).

    Scripts print it as one line and exit non-zero, without a traceback.
    """
