"""Language-model input pipelines: text documents to carried-state token streams.

The paper's language model (Anil et al. 2018, section 3.1; PAPER.md 2.1) reads
sequences of 32 word pieces "drawn from B different documents at a time" and
carries the LSTM state from one batch to the next, never resetting it: the
model learns to reset itself at the end-of-document token. This module builds
that input:

* **Documents** come from a TFDS text dataset (`lm1b`, `c4/en`, ...; the
  `text` feature), read with `download=False`, or from local UTF-8 text files,
  either one document per file (`document_separator="file"`) or documents
  separated by blank lines (`"blank_line"`: a line holding only whitespace
  ends a document; single newlines stay inside it).
* **Tokens.** Ids are laid out the same way for both tokenizers:

      0  PAD   padding (never a real token; masked out)
      1  EOD   end of document
      2+       the tokenizer's ids

  `tokenizer="subword"`: word pieces from a `SubwordTextEncoder` (TFDS) built
  once from the start of the training data (up to `vocab_max_corpus_chars`
  characters of the unsharded, unshuffled training documents) and saved as
  JSON next to the data; it falls back to bytes for anything out of vocabulary,
  so there is no OOV token. Newlines are ordinary characters (paragraph breaks
  become word pieces such as `".\\n"`); the paper's sentence and paragraph
  start/end tokens are not used. `tokenizer="bytes"`: the UTF-8 bytes, ids
  2..257 (vocabulary 258).
* **Streams.** Each per-replica batch holds `B = context.batch_size` rows;
  row i of batch k+1 continues row i of batch k. Every row is a stream: the
  token `EOD`, then documents one after another, each followed by `EOD`.
  A document goes to the stream that has the fewest tokens so far (ties:
  the lowest row), so the streams advance together. Batch k of a stream holds
  inputs `s[32k : 32k+32]` and targets `s[32k+1 : 32k+33]` (the inputs
  shifted by one), and a float mask that is 1 where the target is a real token
  and 0 where it is padding. Training streams never end (the documents repeat,
  reshuffled), so their mask is all ones; evaluation reads the validation
  documents in order, once, and pads the end of each stream, so every
  validation token (and each document's `EOD`) is a target exactly once.
* **Evaluation pieces** (`lm_input_fn(eval_piece_tokens=...)`): instead of
  whole documents, evaluation can read every n-th piece of P tokens of every
  document (the piece taken shifts with the document's index, so openings
  are not favoured), each preceded by up to C tokens of its document that
  are inputs only (masked as targets): a fixed sample of the split that
  spans all its documents, at a fraction of its cost. A piece that stops
  before its document's end is followed by an input-only `EOD`, so the next
  piece starts from the same boundary token as a document does.
* **Splits**: training, validation (`eval_files`) and test (`test_files`);
  `lm_input_fn(eval_split="test")` evaluates on the test documents, with
  the same pieces, streams and batches as validation.

`lm_input_fn` is the gin-configurable input function for
`tf_codistill.train_lib.train_group`. Its batches are `(tokens, targets,
mask)`: `[B, sequence_length]` int32, int32 and float32. Training reads only
this group's documents (`DataContext.shard_examples` for local files,
`DataContext.tfds_split` for TFDS); evaluation reads all of them.

The word-piece tokenizer is Python (`tf.numpy_function`, one core: about
2 M characters/s measured on this project's 2-core CI machine). As with any
tf.data pipeline that runs Python, drop live iterators before the interpreter
exits: a pipeline still prefetching at shutdown can hang the exit (seen once
in three runs of a script that kept its iterator; `binaries/train.py`, whose
iterators end with `fit`, exited cleanly in every run).

Under a strategy with several replicas per input pipeline (MirroredStrategy),
the pipeline's batches go to the replicas in turn, so the pipeline keeps one
set of B streams per replica and emits their batches in that order: each
replica sees its own streams continue.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from collections.abc import Sequence
from typing import Any
from typing import Optional
from typing import Union

import numpy as np
import tensorflow as tf
from absl import logging

from tf_codistill import errors
from tf_codistill.datasets import sharding
from tf_codistill.datasets import shipped

__all__ = [
    "PAD_ID",
    "EOD_ID",
    "EVAL_SPLITS",
    "TextCorpus",
    "lm_input_fn",
    "corpus_vocab_size",
    "unigram_distribution",
    "pack_streams",
]

PAD_ID = 0
EOD_ID = 1
_FIRST_ID = 2  # Ids below this are PAD and EOD.
_NUM_BYTES = 256
_VOCAB_FORMAT = "tf_codistill.text.vocab/1"
_TOKENIZERS = ("subword", "bytes")
EVAL_SPLITS = ("validation", "test")
# Added to the id of a token that is an input only (the context before an
# evaluation piece): never a target. Above any vocabulary.
_INPUT_ONLY = 1 << 24
_SEPARATORS = ("blank_line", "file")
# A line holding only whitespace (or several) between two lines of text.
_BLANK_LINES = r"\r?\n([ \t\f\v\r]*\r?\n)+"
# Stands for a document boundary after the regex pass (ASCII record separator).
_RECORD_SEPARATOR = "\x1e"

_cache_lock = threading.RLock()
_vocab_cache: dict[str, dict[str, Any]] = {}


def _as_list(patterns: Union[None, str, Sequence[str]]) -> list[str]:
    if patterns is None:
        return []
    if isinstance(patterns, str):
        return [patterns]
    return list(patterns)


def _expand(patterns: Sequence[str], what: str) -> list[str]:
    files = []
    for pattern in patterns:
        # `testdata/...` (the tiny configs) is found from any directory.
        pattern = shipped.resolve(os.path.expanduser(pattern), what)
        matched = sorted(tf.io.gfile.glob(pattern))
        if not matched:
            raise errors.DataNotFoundError(f"{what}: no file matches {pattern!r}")
        files.extend(matched)
    return files


class TextCorpus:
    """Where the text comes from and how it becomes token ids.

    Exactly one source: `train_files` (local text files) or `tfds_name`.
    Build it with the same arguments wherever the vocabulary is needed (the
    input function, the model's vocabulary size, the unigram prior): in gin,
    bind the parameters of `TextCorpus` once and every `TextCorpus()` gets
    them; the vocabulary is built on first use and read back afterwards.

    Args:
      train_files: glob pattern(s) of the training text files.
      eval_files: glob pattern(s) of the validation text files.
      test_files: glob pattern(s) of the test text files (held out: read
        only by `lm_input_fn(eval_split="test")`).
      document_separator: `blank_line` (documents separated by lines holding
        only whitespace) or `file` (each file is one document). Files are read
        whole: split very large corpora into files of a few hundred MB at most.
        An ASCII record separator (0x1E) in the text also ends a document.
      tfds_name: a TFDS text dataset, e.g. `lm1b` or `c4/en`; read with
        `download=False` (prepare it beforehand, see `_tfds_missing`).
      tfds_data_dir: TFDS data directory (default: TFDS's, `$TFDS_DATA_DIR`
        or `~/tensorflow_datasets`).
      tfds_train_split: TFDS training split.
      tfds_eval_split: TFDS validation split (`lm1b` has `test` only).
      tfds_test_split: TFDS test split.
      text_key: the TFDS feature holding the text.
      tokenizer: `subword` (word pieces) or `bytes`.
      target_vocab_size: approximate size of the subword encoder's vocabulary
        (pad + word pieces + 256 byte fallbacks; TFDS's builder gets within
        1%). The model's vocabulary is one more (EOD).
      vocab_max_corpus_chars: characters of training text the vocabulary and
        the unigram counts are built from.
      max_subword_length: longest word piece, in characters.
      vocab_dir: where the vocabulary JSON goes; default next to the data (the
        first training file's directory, or `<tfds data dir>/tf_codistill_vocab/
        <dataset>`).
    """

    def __init__(
        self,
        train_files: Union[None, str, Sequence[str]] = None,
        eval_files: Union[None, str, Sequence[str]] = None,
        document_separator: str = "blank_line",
        tfds_name: Optional[str] = None,
        tfds_data_dir: Optional[str] = None,
        tfds_train_split: str = "train",
        tfds_eval_split: str = "validation",
        tfds_test_split: str = "test",
        test_files: Union[None, str, Sequence[str]] = None,
        text_key: str = "text",
        tokenizer: str = "subword",
        target_vocab_size: int = 24005,
        vocab_max_corpus_chars: int = 10_000_000,
        max_subword_length: int = 20,
        vocab_dir: Optional[str] = None,
    ):
        self.train_files = _as_list(train_files)
        self.eval_files = _as_list(eval_files)
        self.test_files = _as_list(test_files)
        if bool(self.train_files) == bool(tfds_name):
            raise errors.ConfigError(
                "TextCorpus needs exactly one source: train_files (local text files) or "
                f"tfds_name (a TFDS dataset); got train_files={train_files!r}, "
                f"tfds_name={tfds_name!r}"
            )
        if (self.eval_files or self.test_files) and tfds_name:
            raise errors.ConfigError(
                f"eval_files={eval_files!r} and test_files={test_files!r} are for local files; "
                "with tfds_name the validation and test documents come from tfds_eval_split "
                "and tfds_test_split"
            )
        if document_separator not in _SEPARATORS:
            raise errors.ConfigError(
                f"document_separator must be one of {_SEPARATORS}, got {document_separator!r}"
            )
        if tokenizer not in _TOKENIZERS:
            raise errors.ConfigError(f"tokenizer must be one of {_TOKENIZERS}, got {tokenizer!r}")
        minimum = _NUM_BYTES + 2
        if tokenizer == "subword" and not (
            isinstance(target_vocab_size, int) and target_vocab_size >= minimum
        ):
            raise errors.ConfigError(
                f"target_vocab_size must be an integer >= {minimum} (pad + one word piece + "
                f"256 bytes), got {target_vocab_size!r}"
            )
        if not (isinstance(vocab_max_corpus_chars, int) and vocab_max_corpus_chars > 0):
            raise errors.ConfigError(
                f"vocab_max_corpus_chars must be a positive integer, got {vocab_max_corpus_chars!r}"
            )
        self.document_separator = document_separator
        self.tfds_name = tfds_name
        self.tfds_data_dir = tfds_data_dir
        self.tfds_train_split = tfds_train_split
        self.tfds_eval_split = tfds_eval_split
        self.tfds_test_split = tfds_test_split
        self.text_key = text_key
        self.tokenizer = tokenizer
        self.target_vocab_size = target_vocab_size
        self.vocab_max_corpus_chars = vocab_max_corpus_chars
        self.max_subword_length = max_subword_length
        self._vocab_dir = vocab_dir

    # ------------------------------------------------------------------
    # Documents.

    def documents(
        self,
        training: bool,
        context: Optional[sharding.DataContext] = None,
        max_documents: Optional[int] = None,
        split: str = "validation",
    ) -> tf.data.Dataset:
        """Scalar-string documents, stripped of surrounding whitespace, non-empty.

        Args:
          training: the training documents (else `split`'s).
          context: restricts the documents to this group's shard (training) and
            this worker's share; None reads all of them, in order.
          max_documents: keep the first this many (before any sharding).
          split: the evaluation split read when not `training`:
            `validation` or `test`.

        Returns:
          A finite `tf.data.Dataset` of scalar `tf.string`, in storage order.
        """
        if split not in EVAL_SPLITS:
            raise errors.ConfigError(f"split must be one of {EVAL_SPLITS}, got {split!r}")
        if self.tfds_name:
            docs = self._tfds_documents(training, context, split)
        else:
            docs = self._file_documents(training, split)
        docs = docs.map(tf.strings.strip).filter(lambda d: tf.strings.length(d) > 0)
        if max_documents is not None:
            docs = docs.take(max_documents)
        if context is not None and not self.tfds_name:
            docs = context.shard_examples(docs)
        elif context is not None:
            docs = context.shard_workers(docs)  # The group's shard is in the split.
        return docs

    def _file_documents(self, training: bool, split: str = "validation") -> tf.data.Dataset:
        if training:
            files = _expand(self.train_files, "TextCorpus.train_files")
        else:
            name, patterns = (
                ("eval_files", self.eval_files)
                if split == "validation"
                else ("test_files", self.test_files)
            )
            if not patterns:
                raise errors.ConfigError(
                    f"TextCorpus.{name} is not set: give the {split} text files "
                    f"(glob patterns) for evaluation on the {split} split"
                )
            files = _expand(patterns, f"TextCorpus.{name}")
        texts = tf.data.Dataset.from_tensor_slices(files).map(tf.io.read_file)
        if self.document_separator == "file":
            return texts
        return texts.flat_map(
            lambda text: tf.data.Dataset.from_tensor_slices(
                tf.strings.split(
                    tf.strings.regex_replace(text, _BLANK_LINES, _RECORD_SEPARATOR),
                    _RECORD_SEPARATOR,
                )
            )
        )

    def _tfds_documents(
        self,
        training: bool,
        context: Optional[sharding.DataContext],
        eval_split: str = "validation",
    ) -> tf.data.Dataset:
        import tensorflow_datasets as tfds

        if training:
            split = self.tfds_train_split
        else:
            split = self.tfds_eval_split if eval_split == "validation" else self.tfds_test_split
        if context is not None:
            split = context.tfds_split(split)  # This group's share (training only).
        shuffle = bool(context is not None and context.training)
        read_config = tfds.ReadConfig(
            shuffle_seed=context.shuffle_seed if context is not None else None
        )
        try:
            dataset = tfds.load(
                self.tfds_name,
                split=split,
                data_dir=self.tfds_data_dir,
                download=False,
                shuffle_files=shuffle,
                read_config=read_config,
            )
        except (AssertionError, tf.errors.NotFoundError, FileNotFoundError) as e:
            raise errors.DataNotFoundError(self._tfds_missing(e)) from e
        spec = dataset.element_spec
        if not isinstance(spec, dict) or self.text_key not in spec:
            keys = sorted(spec) if isinstance(spec, dict) else spec
            raise errors.ConfigError(
                f"TFDS dataset {self.tfds_name!r} has no feature {self.text_key!r} "
                f"(features: {keys}); set TextCorpus.text_key"
            )
        return dataset.map(lambda example: example[self.text_key])

    def _tfds_missing(self, error: BaseException) -> str:
        data_dir = self.tfds_data_dir or "the TFDS default (~/tensorflow_datasets)"
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return (
            f"TFDS dataset {self.tfds_name!r} is not prepared in {data_dir} ({first}). "
            "Nothing is downloaded at run time. Prepare it once where there is "
            f"internet access, e.g. `tfds build {self.tfds_name} --data_dir=<dir>` "
            "(c4 needs Apache Beam and a lot of disk: see the TFDS catalog page) or "
            f"`python -c \"import tensorflow_datasets as tfds; tfds.load('{self.tfds_name}', "
            "data_dir='<dir>')\"`, copy <dir> here and set "
            "tf_codistill.datasets.text.TextCorpus.tfds_data_dir to it"
        )

    # ------------------------------------------------------------------
    # Vocabulary.

    @property
    def vocab_dir(self) -> str:
        if self._vocab_dir:
            return os.path.expanduser(self._vocab_dir)
        if self.tfds_name:
            root = self.tfds_data_dir or os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")
            name = self.tfds_name.replace("/", "_").replace(":", "_")
            return os.path.join(os.path.expanduser(root), "tf_codistill_vocab", name)
        return os.path.dirname(_expand(self.train_files[:1], "TextCorpus.train_files")[0])

    @property
    def vocab_path(self) -> str:
        """The vocabulary JSON: token ids, word pieces and unigram counts."""
        name = (
            f"subword{self.target_vocab_size}" if self.tokenizer == "subword" else "bytes"
        ) + ".vocab.json"
        return os.path.join(self.vocab_dir, name)

    def _build_params(self) -> dict[str, Any]:
        source = (
            {"tfds_name": self.tfds_name, "split": self.tfds_train_split}
            if self.tfds_name
            else {"train_files": self.train_files, "document_separator": self.document_separator}
        )
        params = {
            "tokenizer": self.tokenizer,
            "vocab_max_corpus_chars": self.vocab_max_corpus_chars,
        }
        if self.tokenizer == "subword":
            params.update(
                target_vocab_size=self.target_vocab_size,
                max_subword_length=self.max_subword_length,
            )
        return {**params, "source": source}

    def vocabulary(self) -> dict[str, Any]:
        """The vocabulary (loaded, or built from the training data and saved).

        Returns:
          The JSON content: `vocab_size`, `pad_id`, `eod_id`, `subwords` (word
          pieces; subword tokenizer), `unigram_counts` (`[vocab_size]` counts of
          each id in the text the vocabulary was built from) and `build` (the
          parameters it was built with).

        Raises:
          ValueError: the saved vocabulary was built with other parameters.
        """
        path = self.vocab_path
        with _cache_lock:
            vocab = _vocab_cache.get(path)
            if vocab is None:
                if tf.io.gfile.exists(path):
                    with tf.io.gfile.GFile(path) as f:
                        vocab = json.load(f)
                    logging.info("Read vocabulary %s (%d ids)", path, vocab["vocab_size"])
                else:
                    vocab = self._build_vocabulary()
                    _write_atomically(path, json.dumps(vocab, ensure_ascii=False, indent=0))
                    logging.info("Built vocabulary %s (%d ids)", path, vocab["vocab_size"])
                _vocab_cache[path] = vocab
        if vocab.get("format") != _VOCAB_FORMAT or vocab.get("build") != self._build_params():
            raise errors.ConfigError(
                f"vocabulary {path} was built with {vocab.get('build')}, not with this "
                f"corpus' {self._build_params()}: delete it to rebuild, or set "
                "TextCorpus.vocab_dir to another directory"
            )
        return vocab

    def _sample_texts(self) -> Iterator[str]:
        """Training documents in storage order, up to `vocab_max_corpus_chars`."""
        chars = 0
        for doc in self.documents(training=True).as_numpy_iterator():
            text = doc.decode("utf-8", errors="replace")
            yield text
            chars += len(text)
            if chars >= self.vocab_max_corpus_chars:
                return

    def _build_vocabulary(self) -> dict[str, Any]:
        logging.info(
            "Building the %s vocabulary from up to %d characters of training text",
            self.tokenizer,
            self.vocab_max_corpus_chars,
        )
        texts = list(self._sample_texts())
        if not texts:
            raise errors.ConfigError(
                "the training data holds no documents: cannot build a vocabulary"
            )
        vocab: dict[str, Any] = {"format": _VOCAB_FORMAT, "pad_id": PAD_ID, "eod_id": EOD_ID}
        if self.tokenizer == "subword":
            import tensorflow_datasets as tfds

            encoder = tfds.deprecated.text.SubwordTextEncoder.build_from_corpus(
                iter(texts),
                target_vocab_size=self.target_vocab_size,
                max_subword_length=self.max_subword_length,
                max_corpus_chars=self.vocab_max_corpus_chars,
            )
            # Stored as JSON, not with `save_to_file`: its one-per-line format
            # cannot hold word pieces with a newline (e.g. ".\n"), which text
            # with paragraphs always has.
            vocab["subwords"] = list(encoder.subwords)
            vocab["vocab_size"] = encoder.vocab_size + 1  # + EOD; encoder's 0 is PAD.
            encode = _subword_encode_fn(encoder)
        else:
            vocab["vocab_size"] = _FIRST_ID + _NUM_BYTES

            def encode(text):
                return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int64) + _FIRST_ID

        counts = np.zeros([vocab["vocab_size"]], np.int64)
        for text in texts:
            counts += np.bincount(encode(text), minlength=len(counts))
        counts[EOD_ID] += len(texts)
        vocab["unigram_counts"] = counts.tolist()
        vocab["build"] = self._build_params()
        return vocab

    @property
    def vocab_size(self) -> int:
        """Token ids the model must cover (PAD and EOD included)."""
        if self.tokenizer == "bytes":
            return _FIRST_ID + _NUM_BYTES
        return int(self.vocabulary()["vocab_size"])

    def unigram_counts(self) -> np.ndarray:
        """`[vocab_size]` int64 counts of each id in the vocabulary's sample."""
        return np.asarray(self.vocabulary()["unigram_counts"], np.int64)

    # ------------------------------------------------------------------
    # Tokens.

    def _subword_encoder(self):
        with _cache_lock:
            encoder = getattr(self, "_encoder", None)
            if encoder is None:
                import tensorflow_datasets as tfds

                encoder = tfds.deprecated.text.SubwordTextEncoder(
                    vocab_list=self.vocabulary()["subwords"]
                )
                self._encoder = encoder
        return encoder

    def encoder(self):
        """A function `str -> int64 ids` (no EOD appended)."""
        if self.tokenizer == "bytes":
            return lambda text: (
                np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int64) + _FIRST_ID
            )
        return _subword_encode_fn(self._subword_encoder())

    def decode(self, ids: Sequence[int]) -> str:
        """Text of token ids (PAD dropped, EOD shown as `<eod>`); for inspection."""
        pieces, run = [], []

        def flush():
            if run:
                if self.tokenizer == "bytes":
                    raw = bytes(i - _FIRST_ID for i in run)
                    pieces.append(raw.decode("utf-8", errors="replace"))
                else:
                    pieces.append(self._subword_encoder().decode([i - 1 for i in run]))
                run.clear()

        for i in ids:
            i = int(i)
            if i == PAD_ID:
                continue
            if i == EOD_ID:
                flush()
                pieces.append("<eod>")
            else:
                run.append(i)
        flush()
        return "".join(pieces)

    def tokenize(self, documents: tf.data.Dataset) -> tf.data.Dataset:
        """Maps scalar-string documents to `[n + 1]` int32 ids ending with EOD."""
        eod = tf.constant([EOD_ID], tf.int32)
        if self.tokenizer == "bytes":

            def to_ids(doc):
                ids = tf.cast(tf.io.decode_raw(doc, tf.uint8), tf.int32) + _FIRST_ID
                return tf.concat([ids, eod], axis=0)

        else:
            encode = self.encoder()

            def encode_bytes(doc: bytes) -> np.ndarray:
                return encode(doc.decode("utf-8", errors="replace")).astype(np.int32)

            def to_ids(doc):
                ids = tf.numpy_function(encode_bytes, [doc], tf.int32, stateful=False)
                ids.set_shape([None])
                return tf.concat([ids, eod], axis=0)

        return documents.map(to_ids, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _subword_encode_fn(encoder):
    """Encoder ids (1.., its 0 is padding) shifted by one to make room for EOD."""

    def encode(text: str) -> np.ndarray:
        return np.asarray(encoder.encode(text), np.int64) + 1

    return encode


def _write_atomically(path: str, text: str) -> None:
    """Writes then renames, so concurrent builders (groups) never see half a file."""
    tf.io.gfile.makedirs(os.path.dirname(path) or ".")
    tmp = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}"
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(text)
    tf.io.gfile.rename(tmp, path, overwrite=True)


# ----------------------------------------------------------------------
# Streams.


def pack_streams(
    token_documents: tf.data.Dataset,
    num_streams: int,
    sequence_length: int,
    finite: bool,
    documents_per_step: Optional[int] = None,
) -> tf.data.Dataset:
    """Concatenates documents into parallel streams and cuts them into windows.

    Args:
      token_documents: `[n]` int32 documents, each ending with EOD.
      num_streams: parallel streams (rows of every window).
      sequence_length: L, the positions of one batch.
      finite: the documents end (evaluation): after the last one, the streams
        are padded with PAD up to the end of the window that holds their last
        token. If False, a stream's tokens past the last full window are
        never emitted (the documents are meant to repeat forever).
      documents_per_step: documents appended per step of the packing `scan`
        (a speed setting; the result does not depend on it). Default:
        `max(64, num_streams)`, so that most steps emit windows.

    Returns:
      A dataset of `[num_streams, L + 1]` int32 windows: window k of stream i
      is `s_i[kL : kL + L + 1]`, where `s_i` is EOD followed by the stream's
      documents. Inputs are `[:, :-1]`, targets `[:, 1:]`.
    """
    if documents_per_step is None:
        documents_per_step = max(64, num_streams)
    if num_streams < 1 or sequence_length < 1 or documents_per_step < 1:
        raise errors.ConfigError(
            "num_streams, sequence_length and documents_per_step must be >= 1, got "
            f"{num_streams}, {sequence_length}, {documents_per_step}"
        )
    length = sequence_length
    groups = token_documents.ragged_batch(documents_per_step)
    elements = groups.map(lambda docs: (docs, tf.constant(False)))
    if finite:
        empty = tf.RaggedTensor.from_row_lengths(tf.zeros([0], tf.int32), tf.zeros([0], tf.int64))
        elements = elements.concatenate(tf.data.Dataset.from_tensors((empty, tf.constant(True))))
    # The state holds every token not yet emitted (with one token of overlap:
    # the last target of a window is the first input of the next) as flat
    # (token, stream, position in the stream) triples, positions counted from
    # the next window's start, and each stream's length. A dense
    # [streams, longest stream] buffer would be copied at every step: one long
    # document made that 0.45 s per window at 1,024 streams (Debian docs).
    initial = (
        tf.fill([num_streams], EOD_ID),
        tf.range(num_streams, dtype=tf.int32),
        tf.zeros([num_streams], tf.int32),
        tf.ones([num_streams], tf.int32),
    )

    def assign(carry, size):
        # Greedy, one document at a time: the shortest stream gets it.
        lengths, _, _ = carry
        row = tf.argmin(lengths, output_type=tf.int32)
        start = lengths[row]
        return tf.tensor_scatter_nd_add(lengths, [[row]], [size]), row, start

    def step(state, element):
        tokens, rows_of, positions, lengths = state
        docs, is_flush = element
        sizes = tf.cast(docs.row_lengths(), tf.int32)
        lengths_after, rows, starts = tf.scan(
            assign, sizes, initializer=(lengths, tf.constant(0), tf.constant(0))
        )
        lengths = tf.cond(tf.size(sizes) > 0, lambda: lengths_after[-1], lambda: lengths)
        # Every token of every new document at (its stream, its place there).
        doc_of_token = docs.value_rowids()
        offsets = tf.range(tf.size(docs.flat_values)) - tf.gather(
            tf.cast(docs.row_starts(), tf.int32), doc_of_token
        )
        tokens = tf.concat([tokens, docs.flat_values], 0)
        rows_of = tf.concat([rows_of, tf.gather(rows, doc_of_token)], 0)
        positions = tf.concat([positions, tf.gather(starts, doc_of_token) + offsets], 0)
        # Emit every window that all streams can fill; at the end, the rest.
        count = tf.where(
            is_flush,
            (tf.reduce_max(lengths) - 1 + length - 1) // length,
            (tf.reduce_min(lengths) - 1) // length,
        )
        count = tf.maximum(count, 0)
        taken = count * length
        # Only the tokens of the emitted windows become dense; scatter_nd's
        # zeros are PAD (PAD_ID is 0) after a stream's end.
        emitted = positions <= taken
        buffer = tf.scatter_nd(
            tf.stack([tf.boolean_mask(rows_of, emitted), tf.boolean_mask(positions, emitted)], 1),
            tf.boolean_mask(tokens, emitted),
            [num_streams, taken + 1],
        )
        index = tf.range(count)[:, tf.newaxis] * length + tf.range(length + 1)[tf.newaxis, :]
        windows = tf.transpose(tf.gather(buffer, index, axis=1), [1, 0, 2])
        kept = positions >= taken
        state = (
            tf.boolean_mask(tokens, kept),
            tf.boolean_mask(rows_of, kept),
            tf.boolean_mask(positions, kept) - taken,
            tf.maximum(lengths - taken, 0),
        )
        return state, windows

    return elements.scan(initial, step).unbatch()


def evaluation_pieces(
    token_documents: tf.data.Dataset,
    piece_tokens: int,
    every: int = 1,
    context_tokens: int = 0,
) -> tf.data.Dataset:
    """Every `every`-th piece of `piece_tokens` tokens of each document, with its context.

    Document d's tokens (its final EOD included) are cut into pieces of
    `piece_tokens` (the last one shorter); piece j is kept when
    `(j + d) % every == 0`, so the kept pieces shift from one document to the
    next instead of always being openings. Each kept piece comes with up to
    `context_tokens` tokens of its document before it, marked input-only, and,
    if it stops before the document's end, an input-only EOD after it (the
    next piece of the stream starts after an EOD, as a document does).
    Input-only tokens carry `_INPUT_ONLY` added to their id: `lm_input_fn`
    removes it and masks them as targets.

    Args:
      token_documents: `[n]` int32 documents, each ending with EOD, in a fixed order.
      piece_tokens: P, tokens per piece.
      every: keep one piece in this many.
      context_tokens: C, input-only tokens before each piece (e.g. the model's
        context; 0 for none).

    Returns:
      A dataset of `[<= C + P + 1]` int32 segments, the last token of each an
      EOD (real or input-only), ready for `pack_streams`.
    """
    for name, value, minimum in (
        ("eval_piece_tokens", piece_tokens, 1),
        ("eval_piece_every", every, 1),
        ("eval_piece_context", context_tokens, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise errors.ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    input_only_eod = tf.constant([EOD_ID + _INPUT_ONLY], tf.int32)

    def pieces(index, ids):
        n = tf.size(ids)
        count = (n + piece_tokens - 1) // piece_tokens
        number = tf.range(count)
        keep = tf.equal((number + tf.cast(index % every, tf.int32)) % every, 0)
        starts = tf.boolean_mask(number * piece_tokens, keep)

        def piece(start):
            low = tf.maximum(start - context_tokens, 0)
            high = tf.minimum(start + piece_tokens, n)
            body = ids[low:high]
            body = tf.where(tf.range(high - low) < start - low, body + _INPUT_ONLY, body)
            tail = tf.cond(high < n, lambda: input_only_eod, lambda: tf.zeros([0], tf.int32))
            return tf.concat([body, tail], axis=0)

        return tf.data.Dataset.from_tensor_slices(starts).map(piece)

    return token_documents.enumerate().flat_map(pieces)


def lm_input_fn(
    context: sharding.DataContext,
    corpus: Optional[TextCorpus] = None,
    sequence_length: int = 32,
    max_eval_documents: Optional[int] = None,
    eval_batches: Optional[int] = None,
    eval_split: str = "validation",
    eval_piece_tokens: Optional[int] = None,
    eval_piece_every: int = 1,
    eval_piece_context: int = 0,
    cache_eval: bool = False,
) -> tf.data.Dataset:
    """Language-model input function for `train_lib.train_group`.

    Args:
      context: which data this pipeline reads; `context.batch_size` is the
        number of streams per replica (B).
      corpus: the text and tokenizer; default `TextCorpus()` as configured in gin.
      sequence_length: positions per batch (the paper: 32 word pieces).
      max_eval_documents: evaluate on the first this many validation documents
        (all when None); every evaluation reads the same ones.
      eval_batches: if set, validation has exactly this many batches per
        replica: the streams are cut after it, or followed by fully masked
        batches if they end sooner. Set `train_group.eval_steps` to the same
        number: under a distribution strategy Keras needs the number of
        evaluation steps, and a validation set that ends before it stops
        all later evaluations of the run.
      eval_split: `validation` (the corpus' `eval_files`) or `test`
        (`test_files`): what evaluation reads (a study switches to `test`
        to read its final numbers).
      eval_piece_tokens: if set, evaluation reads pieces of this many tokens
        sampled across all the documents (`evaluation_pieces`) instead of
        whole documents: a fixed sample of the split that spans it.
      eval_piece_every: with `eval_piece_tokens`, keep one piece in this many.
      eval_piece_context: with `eval_piece_tokens`, tokens of each piece's
        document before it given as inputs only (at least the model's
        context - 1, so that no scored position sees another piece).
      cache_eval: keep the evaluation batches in memory after the first
        pass (they are the same at every evaluation), instead of reading,
        tokenizing and packing the documents again each time. Only for
        evaluations read to the end (`train_group.eval_steps` None): a pass
        stopped early is not cached (tf.data warns and reads again).

    Returns:
      Batches `(tokens, targets, mask)`: `[B, sequence_length]` int32 inputs,
      int32 targets (the next token) and float32 mask (1 for real targets,
      0 for padding at the end of a validation stream). Training batches
      repeat forever; validation batches end after the last document (or
      after `eval_batches`).
    """
    if not (isinstance(sequence_length, int) and sequence_length >= 1):
        raise errors.ConfigError(
            f"sequence_length must be an integer >= 1, got {sequence_length!r}"
        )
    if eval_batches is not None and (
        isinstance(eval_batches, bool) or not isinstance(eval_batches, int) or eval_batches < 1
    ):
        raise errors.ConfigError(
            f"eval_batches must be None or an integer >= 1, got {eval_batches!r}"
        )
    if eval_split not in EVAL_SPLITS:
        raise errors.ConfigError(f"eval_split must be one of {EVAL_SPLITS}, got {eval_split!r}")
    corpus = corpus or TextCorpus()
    if context.training:
        docs = corpus.documents(True, context)
        docs = docs.shuffle(
            context.shuffle_buffer, seed=context.shuffle_seed, reshuffle_each_iteration=True
        ).repeat()
    else:
        docs = corpus.documents(False, context, max_documents=max_eval_documents, split=eval_split)
    replicas = context.replicas_per_pipeline
    tokens = corpus.tokenize(docs).filter(lambda ids: tf.size(ids) > 1)
    pieces = eval_piece_tokens is not None and not context.training
    if eval_piece_tokens is not None:
        # Built in training too: a bad setting fails at the start, not at the
        # first evaluation.
        segments = evaluation_pieces(
            tokens, eval_piece_tokens, eval_piece_every, eval_piece_context
        )
        if pieces:
            tokens = segments
    windows = pack_streams(
        tokens, replicas * context.batch_size, sequence_length, finite=not context.training
    )
    if replicas > 1:
        # Replica r gets rows [rB, (r+1)B) of every window, in turn.
        windows = windows.map(
            lambda w: tf.reshape(w, [replicas, context.batch_size, sequence_length + 1])
        ).unbatch()
    if context.training and context.initial_step:
        # A restarted group continues its streams where it stopped: each step
        # took one window per replica. (Its carried RNN state starts from zero.)
        windows = windows.skip(context.initial_step * replicas)
    if eval_batches is not None and not context.training:
        # Padding windows after the streams' end keep every replica's turn:
        # the real windows come in whole rounds of `replicas`.
        padding = tf.data.Dataset.from_tensors(
            tf.fill([context.batch_size, sequence_length + 1], PAD_ID)
        ).repeat()
        windows = windows.concatenate(padding).take(eval_batches * replicas)
    shape = [context.batch_size, sequence_length]

    def split(window):
        inputs = tf.ensure_shape(window[:, :-1], shape)
        targets = tf.ensure_shape(window[:, 1:], shape)
        mask = tf.not_equal(targets, PAD_ID)
        if pieces:
            # Input-only tokens (a piece's context) are never targets.
            mask &= targets < _INPUT_ONLY
            inputs %= _INPUT_ONLY
            targets %= _INPUT_ONLY
        return inputs, targets, tf.cast(mask, tf.float32)

    batches = windows.map(split, num_parallel_calls=tf.data.AUTOTUNE)
    if cache_eval and not context.training:
        batches = batches.cache()
    return batches.prefetch(tf.data.AUTOTUNE)


def corpus_vocab_size(corpus: Optional[TextCorpus] = None) -> int:
    """The corpus' vocabulary size (builds the vocabulary on first use); for gin:

    `tf_codistill.models.lstm_lm.vocab_size = @tf_codistill.datasets.text.corpus_vocab_size()`
    """
    return (corpus or TextCorpus()).vocab_size


def unigram_distribution(corpus: Optional[TextCorpus] = None) -> np.ndarray:
    """`[vocab_size]` float32 token frequencies of the vocabulary's sample.

    The frequency of id t is its count divided by the total; PAD never occurs
    (0), EOD once per document, ids never seen get 0. The prior of the paper's
    "label smoothing toward the unigram distribution".
    """
    counts = (corpus or TextCorpus()).unigram_counts().astype(np.float64)
    if counts.sum() <= 0:
        raise errors.ConfigError("the vocabulary's unigram counts are all zero")
    return (counts / counts.sum()).astype(np.float32)
