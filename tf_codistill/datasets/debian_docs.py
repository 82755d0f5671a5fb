"""A real English text corpus available offline: two Debian documentation packages.

The reproduction study (`benchmarks/reproduce.py`, `docs/REPRODUCTION.md`)
needs real text that this project's machines have without internet access.
Two Debian packages hold about 4.4 M words of English technical prose:

* `python3.11-doc`: the CPython documentation's reStructuredText sources,
  `/usr/share/doc/python3.11/html/_sources/**/*.txt` (497 files, about
  1.4 M words);
* `linux-doc-6.1`: the Linux kernel documentation,
  `/usr/share/doc/linux-doc-6.1/Documentation/**/*.rst.gz` (gzipped
  reStructuredText; `translations/` is left out, 2,842 files, about 3.0 M
  words).

Install them with `apt-get install python3.11-doc linux-doc-6.1`. The text is
used as it is, markup included (reStructuredText directives, literal blocks
of code and shell commands): it is what the files say, not cleaned prose.

`prepare` writes each file as one document (decompressed, UTF-8) into a
cache directory, named by a hash of its path so that the storage order mixes
both packages, and splits the documents deterministically into training,
validation and (with `test_percent`) test by that hash. `text_corpus` returns
the `tf_codistill.datasets.text.TextCorpus` that reads the cache one document
per file; its word-piece vocabulary is built on first use and saved in the
cache too, so later runs (and every group) read it back.

A gin config names the splits with `split_files` (see `gin/lm/conv.gin`):
every group's input function prepares the cache on first use, under a file
lock, so the groups of a run (and the study's runs) can start together on a
machine where it does not exist yet.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import gzip
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from collections.abc import Sequence
from typing import Any
from typing import Optional

from absl import logging

from tf_codistill import errors
from tf_codistill.datasets import text

__all__ = [
    "PACKAGES",
    "Source",
    "DEFAULT_SOURCES",
    "PreparedCorpus",
    "find_documents",
    "prepare",
    "split_files",
    "text_corpus",
]

PACKAGES = ("python3.11-doc", "linux-doc-6.1")
INSTALL = "apt-get install " + " ".join(PACKAGES)
_FORMAT = "tf_codistill.debian_docs/1"
_MANIFEST = "manifest.json"
SPLITS = ("train", "valid", "test")
DEFAULT_CACHE_DIR = "~/.cache/tf_codistill/debian_docs"


@dataclasses.dataclass(frozen=True)
class Source:
    """One package's documents: files under `root` whose names end with `suffix`.

    Attributes:
      name: short name, the first part of each document's id (`python/...`).
      package: the Debian package that installs the files.
      root: directory searched recursively.
      suffix: file-name ending of the documents (`.txt`, `.rst.gz`).
      exclude: top-level subdirectories of `root` to leave out.
    """

    name: str
    package: str
    root: str
    suffix: str
    exclude: tuple[str, ...] = ()


DEFAULT_SOURCES = (
    Source("python", "python3.11-doc", "/usr/share/doc/python3.11/html/_sources", ".txt"),
    Source(
        "linux",
        "linux-doc-6.1",
        "/usr/share/doc/linux-doc-6.1/Documentation",
        ".rst.gz",
        exclude=("translations",),
    ),
)


def find_documents(sources: Sequence[Source] = DEFAULT_SOURCES) -> list[tuple[str, str]]:
    """Every document of `sources`, as `(id, path)` sorted by id.

    The id is `<source name>/<path relative to the root>`; it does not depend
    on where the package is installed, so the split does not either.

    Raises:
      FileNotFoundError: a source's directory is missing or holds no document;
        the message names the package to install.
    """
    found = []
    missing = []
    for source in sources:
        count = 0
        if os.path.isdir(source.root):
            for directory, subdirs, files in os.walk(source.root):
                relative_dir = os.path.relpath(directory, source.root)
                if relative_dir == ".":
                    subdirs[:] = [d for d in subdirs if d not in source.exclude]
                subdirs.sort()
                for name in sorted(files):
                    if name.endswith(source.suffix):
                        relative = os.path.normpath(os.path.join(relative_dir, name))
                        found.append((f"{source.name}/{relative}", os.path.join(directory, name)))
                        count += 1
        if count == 0:
            missing.append(source)
    if missing:
        where = ", ".join(f"{s.root}/**/*{s.suffix} (package {s.package})" for s in missing)
        packages = " ".join(s.package for s in missing)
        raise errors.DataNotFoundError(
            f"no documents found in {where}. The reproduction corpus is the text of two "
            f"Debian documentation packages: install them with `apt-get install {packages}` "
            f"(all of it: `{INSTALL}`)"
        )
    return sorted(found)


def _hash(document_id: str) -> str:
    return hashlib.sha1(document_id.encode("utf-8")).hexdigest()


def _position(document_id: str) -> int:
    """The first 8 hex digits of the SHA-1 of the id, in [0, 16^8)."""
    return int(_hash(document_id)[:8], 16)


def is_validation(document_id: str, validation_percent: float) -> bool:
    """Whether a document belongs to validation: the first 8 hex digits of the
    SHA-1 of its id, as a fraction of 16^8, is below `validation_percent` / 100."""
    return _position(document_id) < validation_percent / 100 * 16**8


def split_of(document_id: str, validation_percent: float, test_percent: float = 0.0) -> str:
    """`valid`, `test` or `train`: validation below `validation_percent` / 100 of
    the hash range (as `is_validation`), test in the next `test_percent` / 100,
    training above. A test split leaves validation and its documents unchanged."""
    position = _position(document_id)
    if position < validation_percent / 100 * 16**8:
        return "valid"
    if position < (validation_percent + test_percent) / 100 * 16**8:
        return "test"
    return "train"


def _read(path: str) -> str:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        return f.read().decode("utf-8", errors="replace")


@dataclasses.dataclass(frozen=True)
class PreparedCorpus:
    """Where `prepare` put the documents.

    Attributes:
      directory: the cache directory.
      train_files: glob of the training documents (one file each).
      eval_files: glob of the validation documents.
      manifest: counts (documents, characters, words; UTF-8 bytes in caches
        written since the test split exists) per split and source.
      test_files: glob of the test documents (None: prepared without a test split).
    """

    directory: str
    train_files: str
    eval_files: str
    manifest: dict[str, Any]
    test_files: Optional[str] = None


def prepare(
    cache_dir: str,
    validation_percent: float = 5.0,
    sources: Sequence[Source] = DEFAULT_SOURCES,
    test_percent: float = 0.0,
) -> PreparedCorpus:
    """Writes the documents into `cache_dir` once, split into train, validation (and test).

    Layout: `<cache_dir>/train/<hash>.txt`, `<cache_dir>/valid/<hash>.txt`
    and, with `test_percent`, `<cache_dir>/test/<hash>.txt` (one document per
    file, the hash of its id as the name), and `<cache_dir>/manifest.json`. A
    cache written with the same settings is reused as it is; other settings
    are an error (delete the directory). A cache written before test splits
    existed is the same as one written with `test_percent=0`.

    Safe to call from several processes at once: they take turns under a lock
    file next to the cache (`<cache_dir>.lock`); the first prepares, the
    others find its cache.

    Args:
      cache_dir: where the documents go (created).
      validation_percent: share of the documents in validation, by hash.
      sources: the packages' documents (default: both packages).
      test_percent: share of the documents in the test split, by hash (the
        range after validation's, so validation does not change); 0: none.

    Returns:
      A `PreparedCorpus`.

    Raises:
      FileNotFoundError: the packages are not installed (see `find_documents`).
      ValueError: a percentage is out of range, or the cache holds another
        preparation.
    """
    if not 0 < validation_percent < 100:
        raise errors.ConfigError(
            f"validation_percent must be in (0, 100), got {validation_percent!r}"
        )
    if not (0 <= test_percent and validation_percent + test_percent < 100):
        raise errors.ConfigError(
            f"test_percent must be >= 0 and leave training documents "
            f"(validation_percent + test_percent < 100), got test_percent={test_percent!r} "
            f"with validation_percent={validation_percent!r}"
        )
    cache_dir = os.path.abspath(os.path.expanduser(cache_dir))
    settings = {
        "format": _FORMAT,
        "validation_percent": validation_percent,
        "sources": [dataclasses.asdict(s) | {"exclude": list(s.exclude)} for s in sources],
    }
    if test_percent:
        # Only when set, so that caches written before test splits stay valid.
        settings["test_percent"] = test_percent
    with _locked(cache_dir):
        manifest = _read_manifest(cache_dir, settings)
        if manifest is None:
            manifest = _write(cache_dir, settings, sources, validation_percent, test_percent)
    return _prepared(cache_dir, manifest)


@contextlib.contextmanager
def _locked(cache_dir: str) -> Iterator[None]:
    """Holds an exclusive lock on `<cache_dir>.lock` (created; never deleted)."""
    os.makedirs(os.path.dirname(cache_dir) or ".", exist_ok=True)
    with open(cache_dir + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _read_manifest(cache_dir: str, settings: dict[str, Any]) -> Optional[dict[str, Any]]:
    """The manifest of a cache prepared with `settings`; None if there is none."""
    manifest_path = os.path.join(cache_dir, _MANIFEST)
    if not os.path.exists(manifest_path):
        return None
    with open(manifest_path, encoding="utf-8") as f:
        manifest = json.load(f)
    if manifest.get("settings") != settings:
        raise errors.ConfigError(
            f"{cache_dir} holds a corpus prepared with {manifest.get('settings')}, not "
            f"{settings}: delete it or choose another cache directory"
        )
    return manifest


def _write(
    cache_dir: str,
    settings: dict[str, Any],
    sources: Sequence[Source],
    validation_percent: float,
    test_percent: float,
) -> dict[str, Any]:
    """Writes the cache (under the lock) and returns its manifest."""
    documents = find_documents(sources)
    # Written into a temporary directory, then renamed: a crash never leaves
    # half a corpus that looks prepared.
    tmp = tempfile.mkdtemp(prefix=".prepare-", dir=os.path.dirname(cache_dir) or ".")
    splits = ("train", "valid", "test") if test_percent else ("train", "valid")
    counts: dict[str, dict[str, dict[str, int]]] = {split: {} for split in splits}
    try:
        for split in counts:
            os.makedirs(os.path.join(tmp, split))
        for document_id, path in documents:
            content = _read(path).strip()
            if not content:
                continue
            split = split_of(document_id, validation_percent, test_percent)
            with open(os.path.join(tmp, split, _hash(document_id) + ".txt"), "w") as f:
                f.write(content)
            source = document_id.split("/", 1)[0]
            entry = counts[split].setdefault(
                source, {"documents": 0, "characters": 0, "words": 0, "bytes": 0}
            )
            entry["documents"] += 1
            entry["characters"] += len(content)
            entry["words"] += len(content.split())
            entry["bytes"] += len(content.encode("utf-8"))
        manifest = {"settings": settings, "counts": counts}
        with open(os.path.join(tmp, _MANIFEST), "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2, sort_keys=True)
        if os.path.exists(cache_dir):
            shutil.rmtree(cache_dir)  # A directory without a manifest: unfinished.
        os.rename(tmp, cache_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logging.info("Prepared %s: %s", cache_dir, json.dumps(counts, sort_keys=True))
    return manifest


def _prepared(cache_dir: str, manifest: dict[str, Any]) -> PreparedCorpus:
    has_test = "test" in manifest["counts"]
    return PreparedCorpus(
        directory=cache_dir,
        train_files=os.path.join(cache_dir, "train", "*.txt"),
        eval_files=os.path.join(cache_dir, "valid", "*.txt"),
        manifest=manifest,
        test_files=os.path.join(cache_dir, "test", "*.txt") if has_test else None,
    )


def split_files(
    split: str,
    cache_dir: str = DEFAULT_CACHE_DIR,
    validation_percent: float = 5.0,
    test_percent: float = 0.0,
    sources: Sequence[Source] = DEFAULT_SOURCES,
) -> str:
    """The glob of one split's documents, preparing the cache first if needed.

    For gin, where `TextCorpus`'s file patterns are bound to a reference that
    is called each time the corpus is built (by every group's input function
    and by evaluation), e.g.

        TextCorpus.train_files = @train/tf_codistill.datasets.debian_docs.split_files()
        train/tf_codistill.datasets.debian_docs.split_files.split = "train"

    Args:
      split: `train`, `valid` or `test`.
      cache_dir, validation_percent, test_percent, sources: as `prepare`.

    Returns:
      A glob pattern of the split's files (one document each).

    Raises:
      ValueError: an unknown split, or `test` without `test_percent`.
      FileNotFoundError: the packages are not installed.
    """
    if split not in SPLITS:
        raise errors.ConfigError(f"split must be one of {SPLITS}, got {split!r}")
    if split == "test" and not test_percent:
        raise errors.ConfigError(
            "the test split needs test_percent > 0 (the share of the documents held out "
            "for testing), got test_percent=0"
        )
    prepared = prepare(cache_dir, validation_percent, sources, test_percent=test_percent)
    return {
        "train": prepared.train_files,
        "valid": prepared.eval_files,
        "test": prepared.test_files,
    }[split]


def text_corpus(
    prepared: PreparedCorpus,
    target_vocab_size: int = 4096,
    vocab_max_corpus_chars: int = 4_000_000,
    tokenizer: str = "subword",
    vocab_dir: Optional[str] = None,
) -> text.TextCorpus:
    """The `TextCorpus` of a prepared corpus: one document per file, word pieces.

    The vocabulary is built from the first `vocab_max_corpus_chars` characters
    of the training documents in storage (hash) order on first use, and saved
    as `<vocab_dir or cache dir>/subword<target_vocab_size>.vocab.json`.
    """
    return text.TextCorpus(
        train_files=prepared.train_files,
        eval_files=prepared.eval_files,
        test_files=prepared.test_files,
        document_separator="file",
        tokenizer=tokenizer,
        target_vocab_size=target_vocab_size,
        vocab_max_corpus_chars=vocab_max_corpus_chars,
        vocab_dir=vocab_dir or prepared.directory,
    )
