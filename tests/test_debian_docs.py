"""The offline text corpus of the reproduction study, on small generated packages."""

import gzip
import json
import os
import threading

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


def test_test_split_leaves_validation_unchanged(sources, tmp_path):
    without = debian_docs.prepare(str(tmp_path / "a"), validation_percent=20.0, sources=sources)
    prepared = debian_docs.prepare(
        str(tmp_path / "b"), validation_percent=20.0, test_percent=30.0, sources=sources
    )
    assert without.test_files is None
    assert prepared.test_files == os.path.join(prepared.directory, "test", "*.txt")
    counts = prepared.manifest["counts"]
    total = {split: sum(c["documents"] for c in counts[split].values()) for split in counts}
    assert sum(total.values()) == 50 and total["test"] > 0 and total["train"] > 0
    # The same validation documents with and without a test split.
    assert sorted(os.listdir(tmp_path / "a" / "valid")) == sorted(
        os.listdir(tmp_path / "b" / "valid")
    )
    # Test holds the hash range after validation's, taken from training.
    test_files = set(os.listdir(tmp_path / "b" / "test"))
    assert test_files <= set(os.listdir(tmp_path / "a" / "train"))
    for doc_id, _ in debian_docs.find_documents(sources):
        name = debian_docs._hash(doc_id) + ".txt"
        assert (debian_docs.split_of(doc_id, 20.0, 30.0) == "test") == (name in test_files)
    # UTF-8 bytes are counted (the byte tokenizer's tokens).
    entry = counts["test"][next(iter(counts["test"]))]
    assert entry["bytes"] >= entry["characters"] > 0


def test_caches_without_a_test_split_stay_valid(sources, tmp_path):
    # A cache prepared before test splits existed has no test_percent in its
    # settings: test_percent=0 (the default) reads it; asking for a test split
    # is a clear error, not a silent re-split.
    cache = str(tmp_path / "cache")
    prepared = debian_docs.prepare(cache, validation_percent=20.0, sources=sources)
    assert "test_percent" not in prepared.manifest["settings"]
    assert set(prepared.manifest["counts"]) == {"train", "valid"}
    with pytest.raises(ValueError, match="delete it or choose another cache directory"):
        debian_docs.prepare(cache, validation_percent=20.0, test_percent=5.0, sources=sources)


@pytest.mark.parametrize(
    "validation, test",
    [(5.0, -1.0), (50.0, 50.0), (60.0, 45.0)],
)
def test_bad_test_percent(validation, test):
    with pytest.raises(ValueError, match="test_percent must be >= 0"):
        debian_docs.prepare("/nonexistent", validation_percent=validation, test_percent=test)


def test_prepare_waits_for_another_preparer(sources, tmp_path):
    # A process (here: this thread) preparing the cache holds the lock; a
    # second caller waits for it, then reads the finished cache.
    cache = str(tmp_path / "caches" / "cache")
    results = []
    with debian_docs._locked(cache):
        worker = threading.Thread(
            target=lambda: results.append(
                debian_docs.prepare(cache, validation_percent=20.0, sources=sources)
            )
        )
        worker.start()
        worker.join(timeout=1.0)
        assert worker.is_alive() and not os.path.exists(cache)
    worker.join(timeout=60.0)
    assert results and results[0].manifest["counts"]["valid"]
    # Many at once: one prepares, all get the same corpus; no temporary directory is left.
    other = str(tmp_path / "caches" / "other")
    manifests = []
    threads = [
        threading.Thread(
            target=lambda: manifests.append(
                debian_docs.prepare(other, validation_percent=20.0, sources=sources).manifest
            )
        )
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60.0)
    assert len(manifests) == 4 and all(m == manifests[0] for m in manifests)
    assert sorted(os.listdir(tmp_path / "caches")) == ["cache", "cache.lock", "other", "other.lock"]


def test_split_files_prepares_and_names_each_split(sources, tmp_path):
    cache = str(tmp_path / "cache")
    kwargs = dict(cache_dir=cache, validation_percent=20.0, test_percent=20.0, sources=sources)
    assert debian_docs.split_files("test", **kwargs) == os.path.join(cache, "test", "*.txt")
    assert debian_docs.split_files("valid", **kwargs) == os.path.join(cache, "valid", "*.txt")
    assert debian_docs.split_files("train", **kwargs) == os.path.join(cache, "train", "*.txt")
    with pytest.raises(ValueError, match="split must be one of"):
        debian_docs.split_files("validation", **kwargs)
    with pytest.raises(ValueError, match="test split needs test_percent > 0"):
        debian_docs.split_files("test", cache_dir=cache, sources=sources)


def test_gin_names_the_splits_of_a_text_corpus(sources, tmp_path):
    # As gin/lm/conv.gin binds them: each TextCorpus() prepares (once) and reads its splits.
    import gin

    from tf_codistill import configurables  # noqa: F401  (registers the names)
    from tf_codistill.datasets import text

    cache = str(tmp_path / "cache")
    gin.clear_config()
    try:
        name = "tf_codistill.datasets.debian_docs.split_files"
        gin.parse_config(
            [
                f"{name}.cache_dir = {cache!r}",
                f"{name}.validation_percent = 20.0",
                f"{name}.test_percent = 20.0",
                f"train/{name}.split = 'train'",
                f"valid/{name}.split = 'valid'",
                f"test/{name}.split = 'test'",
                f"tf_codistill.datasets.text.TextCorpus.train_files = @train/{name}()",
                f"tf_codistill.datasets.text.TextCorpus.eval_files = @valid/{name}()",
                f"tf_codistill.datasets.text.TextCorpus.test_files = @test/{name}()",
                "tf_codistill.datasets.text.TextCorpus.document_separator = 'file'",
                "tf_codistill.datasets.text.TextCorpus.tokenizer = 'bytes'",
            ]
        )
        # The fixture's packages (a Source is not a gin literal: bound from Python).
        gin.bind_parameter(f"{name}.sources", sources)
        corpus = text.TextCorpus()
        assert corpus.test_files == [os.path.join(cache, "test", "*.txt")]
        test_docs = list(corpus.documents(False, split="test").as_numpy_iterator())
        assert len(test_docs) == len(os.listdir(os.path.join(cache, "test"))) > 0
    finally:
        gin.clear_config()
