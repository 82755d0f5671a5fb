"""The offline text corpus of the reproduction study, on small generated packages."""

import gzip
import json
import os

import pytest

from tf_codistill.datasets import debian_docs


@pytest.fixture
def sources(tmp_path):
    python = tmp_path / "python" / "_sources"
    linux = tmp_path / "linux" / "Documentation"
    for i in range(30):
        d = python / ("library" if i % 2 else "howto")
        d.mkdir(parents=True, exist_ok=True)
        (d / f"doc{i}.txt").write_text(f"Python document {i}.\n\nThe module number {i} is fine.\n")
    (python / "empty.txt").write_text("   \n")  # left out: nothing in it
    (python / "notes.html").write_text("<p>not a source</p>")  # other suffix
    for i in range(20):
        d = linux / "admin-guide"
        d.mkdir(parents=True, exist_ok=True)
        with gzip.open(d / f"page{i}.rst.gz", "wt") as f:
            f.write(f"Kernel page {i}\n=============\n\nThe driver {i} loads.\n")
    translated = linux / "translations" / "zh_CN"
    translated.mkdir(parents=True)
    with gzip.open(translated / "page0.rst.gz", "wt") as f:
        f.write("translated")
    return (
        debian_docs.Source("python", "python3.11-doc", str(python), ".txt"),
        debian_docs.Source(
            "linux", "linux-doc-6.1", str(linux), ".rst.gz", exclude=("translations",)
        ),
    )


def test_find_documents_reads_both_packages_without_translations(sources):
    found = debian_docs.find_documents(sources)
    ids = [i for i, _ in found]
    assert len(ids) == 31 + 20  # the empty file is found, dropped when prepared
    assert "python/howto/doc0.txt" in ids and "linux/admin-guide/page3.rst.gz" in ids
    assert not any("translations" in i or i.endswith(".html") for i in ids)
    assert ids == sorted(ids)


def test_missing_package_names_what_to_install(sources, tmp_path):
    gone = debian_docs.Source("linux", "linux-doc-6.1", str(tmp_path / "nowhere"), ".rst.gz")
    with pytest.raises(FileNotFoundError, match=r"apt-get install linux-doc-6.1"):
        debian_docs.find_documents((sources[0], gone))


def test_prepare_splits_by_hash_and_is_reused(sources, tmp_path):
    cache = str(tmp_path / "cache")
    prepared = debian_docs.prepare(cache, validation_percent=20.0, sources=sources)
    counts = prepared.manifest["counts"]
    train = sum(c["documents"] for c in counts["train"].values())
    valid = sum(c["documents"] for c in counts["valid"].values())
    assert train + valid == 50 and 0 < valid < 25
    files = os.listdir(os.path.join(cache, "valid"))
    assert len(files) == valid
    # Decompressed text, whole documents.
    texts = [open(os.path.join(cache, "train", n)).read() for n in os.listdir(cache + "/train")]
    assert any(t.startswith("Kernel page") for t in texts)
    assert any(t.startswith("Python document") for t in texts)
    # The split depends on the document ids only.
    for doc_id, _ in debian_docs.find_documents(sources):
        in_valid = debian_docs.is_validation(doc_id, 20.0)
        assert in_valid == (debian_docs._hash(doc_id) + ".txt" in files) or doc_id.endswith(
            "empty.txt"
        )
    # Same settings: reused as it is; other settings: an error naming them.
    mtime = os.path.getmtime(os.path.join(cache, "manifest.json"))
    again = debian_docs.prepare(cache, validation_percent=20.0, sources=sources)
    assert again.manifest == prepared.manifest
    assert os.path.getmtime(os.path.join(cache, "manifest.json")) == mtime
    with pytest.raises(ValueError, match="delete it or choose another cache directory"):
        debian_docs.prepare(cache, validation_percent=10.0, sources=sources)


def test_bad_validation_percent():
    with pytest.raises(ValueError, match=r"validation_percent must be in \(0, 100\)"):
        debian_docs.prepare("/nonexistent", validation_percent=100)


def test_text_corpus_reads_one_document_per_file(sources, tmp_path):
    prepared = debian_docs.prepare(str(tmp_path / "c"), validation_percent=20.0, sources=sources)
    corpus = debian_docs.text_corpus(prepared, target_vocab_size=300)
    assert corpus.vocab_size > 10
    with open(corpus.vocab_path) as f:
        assert json.load(f)["vocab_size"] == corpus.vocab_size
    assert os.path.dirname(corpus.vocab_path) == prepared.directory
    ids = corpus.encoder()("The driver 3 loads.")
    assert corpus.decode(ids) == "The driver 3 loads."
