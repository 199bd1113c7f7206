"""Kinds of samples: what a generator's output is, how it is written and how it is scored.

The run, the sampling command and ``--eval-every`` ask the kind instead of testing the data
by name, so ``common/run.py`` knows no kind of data. A dataset brings its kind (``data.kind``,
with ``data.describe()`` for the first line and ``data.stream(...)`` for its batches); a
checkpoint keeps what the kind needs (``kind.state()``, e.g. a vocabulary), and
``kind_of(checkpoint)`` rebuilds it, so a generator loaded later writes its samples alike.

* ``Images``: (N, C, H, W) in [-1, 1], written as a PNG grid; scored by FID (lower is better).
* ``Text``: G's per-position distributions (N, V, 1, L) read as their likeliest characters,
  (N, L) indices, written one sequence per line; scored by js4 (lower is better).

A new kind implements the same four members (``picture``, ``best_metric``, ``decode``,
``write``) and ``state``, and ``kind_of`` learns to rebuild it from its state.
"""


class Images:
    picture = True  # its samples are a picture: TensorBoard and progress.gif show them
    best_metric = "fid"  # --eval-every keeps the checkpoint with the lowest one
    unit = "images"

    def state(self):
        return {}

    def decode(self, out):
        """G's output as samples: images are what G draws."""
        return out

    def write(self, x, stem, row=None):
        """``stem``.png: a grid with ``row`` images per row (default: square); the path."""
        from common.images import save_grid

        return save_grid(x, stem + ".png", nrow=row)


class Text:
    picture = False
    best_metric = "js4"
    unit = "sequences"

    def __init__(self, vocab):
        self.vocab = vocab  # index -> character

    def state(self):
        return {"vocab": self.vocab}

    def decode(self, out):
        """(N, V, 1, L) distributions -> (N, L) indices of the likeliest characters (the
        authors' sampling in WGAN-GP's and BGAN's language code); indices stay as they are."""
        return out.argmax(1).flatten(1) if out.is_floating_point() else out

    def write(self, x, stem, row=None):
        """``stem``.txt: one sequence per line, a blank line after every ``row``; the path."""
        from common.text import to_text, write_lines

        lines = to_text(x, self.vocab)
        if row:
            lines = [s + ("\n" if (i + 1) % row == 0 else "") for i, s in enumerate(lines)]
        return write_lines(stem + ".txt", lines)


def kind_of(checkpoint):
    """The kind of a checkpoint's samples (or of a run's ``info``): text where it keeps a
    vocabulary, else images."""
    vocab = checkpoint.get("vocab")
    return Text(vocab) if vocab is not None else Images()
