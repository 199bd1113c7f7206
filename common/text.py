"""Character-level text for the two scripts that model it (bgan.py, wgan_gp.py): a corpus
and its vocabulary, resumable batches of random windows, and the n-gram measure.

``--dataset text`` reads ``--data-path``: a UTF-8 text file, or a folder whose ``.txt``
files are read in name order. With no path it reads the help texts that ship with every
Python installation (``pydoc_data.topics``, the language reference's topics that
``help("if")`` prints: 79 topics, about 433,000 characters once whitespace is collapsed),
so that ``python bgan.py --dataset text`` works offline. Runs of whitespace become one
space (the papers' Billion Word sentences are one line each).

The vocabulary is the ``--vocab-size - 1`` most frequent characters plus one unknown
symbol for the rest (WGAN-GP's language model keeps the most frequent characters the
same way); it is stored in the checkpoint, so sampling and evaluation decode with the
run's own. A window is ``--seq-len`` consecutive characters (32 in both papers) at a
uniformly random position.

The measure: Gulrajani et al.'s ``NgramLanguageModel.js_with`` (igul222/improved_wgan_training,
language_helpers.py; Rajeswar et al. 2017 report the same), the Jensen-Shannon divergence, in
bits (0 to 1), between the n-gram distribution of the generated sequences and that of the
corpus, for n = 1..4 (``js1`` .. ``js4``), and ours, ``words``: the share of generated words
(runs of two or more letters, not cut by the window's ends) that occur in the corpus. Both
count the corpus in the run's vocabulary, each character outside it as the unknown symbol,
the alphabet the samples are written in (as gan_language.py counts its reference on the same
mapped lines it trains on). Real windows do not score 0: their sample is finite (the README
gives the real-vs-real floor beside every result).
"""

import collections
import math
import os
import re

import numpy as np
import torch

from common import UserError
from common.kinds import Text

UNKNOWN = "\ufffd"  # shown for any character outside the vocabulary
WORD = re.compile(r"[A-Za-z]{2,}")  # a word: two or more letters
REFERENCE_CHARS = 2_000_000  # the corpus's n-grams are counted on at most this much of it


def default_corpus():
    import pydoc_data.topics

    return " ".join(pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics))


def read_corpus(path):
    """The text of a file or of a folder's .txt files; one clear line for what is not text."""
    if path is None:
        return default_corpus(), "pydoc_data.topics (Python's help texts)"
    path = os.path.expanduser(path)
    if os.path.isdir(path):
        files = sorted(
            os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs if f.endswith(".txt")
        )
        if not files:
            raise UserError(
                f"--data-path {path!r} has no .txt files; give a UTF-8 text file "
                "or a folder of .txt files"
            )
    elif os.path.isfile(path):
        files = [path]
    else:
        raise UserError(
            f"--data-path {path!r} does not exist; give a UTF-8 text file or a folder of .txt files"
        )
    parts = []
    for f in files:
        raw = open(f, "rb").read()
        try:
            if b"\0" in raw:
                raise UnicodeDecodeError("utf-8", raw, 0, 1, "a NUL byte")
            parts.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise UserError(
                f"{f!r} is not UTF-8 text (a binary file?); --dataset text reads plain text"
            ) from None
    return " ".join(parts), path


class TextData:
    """A corpus encoded with its vocabulary: ``ids`` (int64, one per character), ``vocab``
    (a string: index -> character, index 0 the unknown symbol), ``seq_len``. ``channels`` is
    the vocabulary size (the one-hot planes D reads); ``num_classes`` is 0."""

    num_classes = 0

    def __init__(self, path=None, seq_len=32, vocab_size=96, vocab=None):
        text, self.source = read_corpus(path)
        self.text = re.sub(r"\s+", " ", text).strip()
        self.seq_len = seq_len
        if len(self.text) < 2 * seq_len:
            raise UserError(
                f"the text of {self.source!r} has {len(self.text)} characters, too "
                f"few for windows of --seq-len {seq_len}; give a longer text"
            )
        counts = collections.Counter(self.text)
        if vocab is None:
            if len(counts) < 2:
                raise UserError(
                    f"the text of {self.source!r} has {len(counts)} distinct "
                    "character(s); a language model needs at least 2"
                )
            chars = sorted(counts, key=lambda c: (-counts[c], c))[: vocab_size - 1]
            vocab = UNKNOWN + "".join(chars)
        self.vocab = vocab
        table = {c: i for i, c in enumerate(vocab)}
        self.ids = torch.tensor([table.get(c, 0) for c in self.text], dtype=torch.int64)
        self.channels = len(vocab)
        self.unknown_share = 1 - sum(counts[c] for c in vocab[1:]) / len(self.text)
        # str.translate's table: every character of the text outside the vocabulary -> UNKNOWN
        self._unknown = {ord(c): UNKNOWN for c in counts if c not in table}
        self._reference = {}

    def __len__(self):
        return len(self.ids) - self.seq_len + 1  # windows

    @property
    def kind(self):
        """Its samples are text in this vocabulary (common/kinds.py)."""
        return Text(self.vocab)

    def stream(self, batch_size, device, rank, world, args):
        """This rank's endless, resumable ``TextBatches`` of random windows."""
        return TextBatches(self, batch_size, device, args.seed, rank)

    def describe(self):
        return (
            f"text {self.source}: {len(self.text)} characters, vocabulary {self.channels} "
            f"({self.unknown_share:.2%} unknown), windows of {self.seq_len}"
        )

    def decode(self, ids):
        """(N, L) indices -> N strings."""
        return to_text(ids, self.vocab)

    def windows(self, n, seed):
        """n real windows as strings (seeded), e.g. for a real-vs-real baseline."""
        g = torch.Generator().manual_seed(seed)
        at = torch.randint(len(self), (n,), generator=g)
        return self.decode(self.ids[at[:, None] + torch.arange(self.seq_len)])

    def in_vocabulary(self, text):
        """``text`` as the model reads and writes it: characters outside the vocabulary as
        UNKNOWN (decode's alphabet)."""
        return text.translate(self._unknown)

    def reference(self, n):
        """The corpus's n-gram counts in the vocabulary's alphabet (language_helpers.py counts
        the same mapped lines the model trains on), on at most REFERENCE_CHARS characters:
        random 1000-character stretches, seeded, for a larger corpus."""
        if n not in self._reference:
            text = self.text
            if len(text) > REFERENCE_CHARS:
                g = np.random.default_rng(0)
                starts = np.sort(g.integers(0, len(text) - 1000, REFERENCE_CHARS // 1000))
                texts = [self.in_vocabulary(text[s : s + 1000]) for s in starts]
            else:
                texts = [self.in_vocabulary(text)]
            self._reference[n] = ngrams(texts, n)
        return self._reference[n]

    def words(self):
        """The corpus's words in the vocabulary's alphabet (a character outside it ends a
        word, as it does in the samples)."""
        if "words" not in self._reference:
            self._reference["words"] = set(WORD.findall(self.in_vocabulary(self.text)))
        return self._reference["words"]


def load_text(args, resumed=None):
    """``--dataset text`` for ``Run.dataset(load=...)``: the corpus at --data-path (or the
    embedded one) in windows of --seq-len over its --vocab-size most frequent characters; a
    resumed run keeps its checkpoint's vocabulary."""
    vocab = resumed.get("vocab") if resumed is not None else None
    return TextData(args.data_path, args.seq_len, args.vocab_size, vocab)


class TextBatches:
    """This rank's endless stream of (windows, None): (batch, seq_len) int64 indices at
    uniformly random positions, from a generator of its own (seeded by seed and rank), so
    that a resumed run draws the same windows (``state_dict``)."""

    def __init__(self, data, batch_size, device, seed, rank=0):
        self.data, self.batch_size, self.device = data, batch_size, device
        self.gen = torch.Generator().manual_seed(seed * 1000003 + rank)
        self.offsets = torch.arange(data.seq_len)

    def __iter__(self):
        while True:
            at = torch.randint(len(self.data), (self.batch_size,), generator=self.gen)
            yield self.data.ids[at[:, None] + self.offsets].to(self.device), None

    def state_dict(self):
        return {"rng": self.gen.get_state()}

    def load_state_dict(self, state):
        self.gen.set_state(state["rng"])


def ngrams(texts, n):
    """Counts of the character n-grams inside each text (none across texts)."""
    c = collections.Counter()
    for t in texts:
        c.update(t[i : i + n] for i in range(len(t) - n + 1))
    return c


def js_divergence(p, q):
    """Jensen-Shannon divergence in bits between two count tables (0: equal, 1: disjoint)."""
    keys = list(p.keys() | q.keys())
    a = np.array([p.get(k, 0) for k in keys], dtype=np.float64)
    b = np.array([q.get(k, 0) for k in keys], dtype=np.float64)
    a, b = a / a.sum(), b / b.sum()
    m = (a + b) / 2

    def kl(x):
        nz = x > 0
        return float((x[nz] * np.log2(x[nz] / m[nz])).sum())

    return max(0.0, 0.5 * kl(a) + 0.5 * kl(b))


def word_share(texts, vocabulary):
    """The share of whole words (runs of letters not touching a window's ends) that occur in
    ``vocabulary``; NaN when there are none."""
    found = total = 0
    for t in texts:
        for w in WORD.finditer(t):
            if w.start() > 0 and w.end() < len(t):
                total += 1
                found += w.group() in vocabulary
    return found / total if total else math.nan


def text_metrics(texts, data):
    """{"js1".."js4", "words"} of generated strings against the corpus of ``data``."""
    out = {f"js{n}": js_divergence(ngrams(texts, n), data.reference(n)) for n in range(1, 5)}
    out["words"] = word_share(texts, data.words())
    return out


def to_text(x, vocab):
    """Sequences as strings: (N, L) character indices, or a generator's (N, V, 1, L)
    distributions, read as each position's likeliest character."""
    ids = x.argmax(1).flatten(1) if x.is_floating_point() else x
    return ["".join(vocab[i] for i in row) for row in ids.tolist()]


def write_lines(path, lines):
    """Sequences as a UTF-8 text file, one per line; returns the path."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path


def one_hot(ids, vocab):
    """(N, L) character indices -> (N, V, 1, L) float one-hot planes: a sequence as a 1 x L
    image whose channels are the characters, the layout of the generators' outputs."""
    return torch.nn.functional.one_hot(ids, vocab).float().permute(0, 2, 1)[:, :, None]
