"""Language-model input: documents, vocabulary, streams, masks (tf_codistill.datasets.text)."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from tf_codistill import testing
from tf_codistill.datasets import sharding
from tf_codistill.datasets import text

E = text.EOD_ID
FIXTURE = os.path.join(testing.repo_root(), "testdata", "text")
TRAIN = os.path.join(FIXTURE, "train.txt")
VALID = os.path.join(FIXTURE, "valid.txt")


def b(s):
    """Byte-tokenizer ids of `s` (byte + 2)."""
    return [c + 2 for c in s.encode("utf-8")]


def batches(dataset):
    return [tuple(t.numpy() for t in element) for element in dataset]


def write(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content.encode("utf-8"))
    return str(path)


def bytes_corpus(tmp_path, train=TRAIN, valid=VALID, **kwargs):
    return text.TextCorpus(
        train_files=train, eval_files=valid, tokenizer="bytes", vocab_dir=str(tmp_path), **kwargs
    )


def simulate_streams(docs, num_streams):
    """Independent reference: greedy streams of EOD + (doc + EOD)..., as lists."""
    streams = [[E] for _ in range(num_streams)]
    for doc in docs:
        shortest = min(range(num_streams), key=lambda i: (len(streams[i]), i))
        streams[shortest] += list(doc) + [E]
    return streams


def streams_from_batches(out, num_streams):
    """Rebuilds each stream from eval batches: inputs, then the last target, minus padding."""
    tokens = np.concatenate([x for x, _, _ in out], axis=1)
    last_targets = out[-1][1][:, -1:]
    full = np.concatenate([tokens, last_targets], axis=1)
    return [[int(t) for t in full[i] if t != text.PAD_ID] for i in range(num_streams)]


class TestPacking:
    def test_hand_example(self):
        # Byte ids are byte + 2: a=99 ... j=108. Two streams, windows of L=4 (+1 overlap).
        # Streams start with EOD (len 1 each). Greedy, shortest first, ties to row 0:
        #   "abc" -> row 0: [E a b c E]          (len 5)
        #   "de"  -> row 1: [E d e E]            (len 4)
        #   "f"   -> row 1: [E d e E f E]        (len 6)
        #   "ghij"-> row 0: [E a b c E g h i j E] (len 10)
        # Window k of a row is s[4k : 4k+5]; padding (0) after a row's end.
        docs = tf.data.Dataset.from_tensor_slices(["abc", "de", "f", "ghij"])
        tokens = text.TextCorpus(train_files=TRAIN, tokenizer="bytes").tokenize(docs)
        windows = [w.numpy().tolist() for w in text.pack_streams(tokens, 2, 4, finite=True)]
        assert windows == [
            [[E, 99, 100, 101, E], [E, 102, 103, E, 104]],
            [[E, 105, 106, 107, 108], [104, E, 0, 0, 0]],
            [[108, E, 0, 0, 0], [0, 0, 0, 0, 0]],
        ]

    def test_hand_example_through_input_fn(self, tmp_path):
        # The same four documents from a blank-line separated file (a line of
        # spaces and a CRLF blank line also separate), read as evaluation data.
        path = write(tmp_path, "v.txt", "abc\n\nde\n  \nf\r\n\r\n\nghij\n")
        corpus = bytes_corpus(tmp_path, valid=path)
        context = sharding.DataContext(training=False, batch_size=2)
        out = batches(text.lm_input_fn(context, corpus=corpus, sequence_length=4))
        assert len(out) == 3
        # Inputs are windows[:, :4], targets windows[:, 1:], mask = (target != 0).
        (x0, y0, m0), (x1, y1, m1), (x2, y2, m2) = out
        np.testing.assert_array_equal(x0, [[E, 99, 100, 101], [E, 102, 103, E]])
        np.testing.assert_array_equal(y0, [[99, 100, 101, E], [102, 103, E, 104]])
        np.testing.assert_array_equal(m0, np.ones([2, 4]))
        np.testing.assert_array_equal(x1, [[E, 105, 106, 107], [104, E, 0, 0]])
        np.testing.assert_array_equal(y1, [[105, 106, 107, 108], [E, 0, 0, 0]])
        np.testing.assert_array_equal(m1, [[1, 1, 1, 1], [1, 0, 0, 0]])
        np.testing.assert_array_equal(x2, [[108, E, 0, 0], [0, 0, 0, 0]])
        np.testing.assert_array_equal(y2, [[E, 0, 0, 0], [0, 0, 0, 0]])
        np.testing.assert_array_equal(m2, [[1, 0, 0, 0], [0, 0, 0, 0]])
        # 10 characters + 4 EODs = 14 real targets.
        assert sum(m.sum() for _, _, m in out) == 14
        for x, y, m in out:
            assert x.dtype == np.int32 and y.dtype == np.int32 and m.dtype == np.float32

    def test_documents_per_step_does_not_change_the_streams(self):
        corpus = text.TextCorpus(train_files=TRAIN, tokenizer="bytes")
        tokens = corpus.tokenize(corpus.documents(True))
        results = [
            [w.numpy() for w in text.pack_streams(tokens, 3, 8, True, documents_per_step=k)]
            for k in (1, 4, 64)
        ]
        for other in results[1:]:
            assert len(other) == len(results[0])
            for w0, w1 in zip(results[0], other, strict=True):
                np.testing.assert_array_equal(w0, w1)

    def test_long_documents_among_many_streams(self):
        # A few documents much longer than the rest (as in the Debian docs):
        # every stream is still EOD + its greedy documents, padded at the end.
        rng = np.random.default_rng(0)
        lengths = rng.integers(1, 40, size=120)
        lengths[[3, 50, 51]] = [900, 1500, 700]
        docs = [list(rng.integers(2, 258, size=n)) for n in lengths]
        ragged = tf.ragged.constant([d + [E] for d in docs], dtype=tf.int32)
        tokens = tf.data.Dataset.from_tensor_slices(ragged)
        windows = [w.numpy() for w in text.pack_streams(tokens, 16, 8, finite=True)]
        rebuilt = np.concatenate([w[:, :-1] for w in windows] + [windows[-1][:, -1:]], axis=1)
        got = [[int(t) for t in row if t != text.PAD_ID] for row in rebuilt]
        assert got == simulate_streams(docs, 16)
        assert all(w.shape == (16, 9) for w in windows)

    def test_bad_sizes(self):
        docs = tf.data.Dataset.from_tensor_slices([[1]])
        with pytest.raises(ValueError, match="num_streams"):
            text.pack_streams(docs, 0, 4, True)


class TestFixtureBytes:
    def test_validation_counts_and_masks(self, tmp_path):
        # valid.txt: 4 documents of 98, 100, 112 and 87 bytes (wc -c per paragraph).
        # Targets: every byte and each document's EOD: 99 + 101 + 113 + 88 = 401.
        # Greedy into 2 streams (EOD first): row 0 <- docs 1 and 3: 1 + 99 + 113 = 213
        # tokens, 212 targets; row 1 <- docs 2 and 4: 1 + 101 + 88 = 190, 189 targets.
        # Batches of 32: ceil(212 / 32) = 7; row 0 has 224 - 212 = 12 padded
        # positions, row 1 224 - 189 = 35, all at the ends.
        context = sharding.DataContext(training=False, batch_size=2)
        out = batches(text.lm_input_fn(context, corpus=bytes_corpus(tmp_path)))
        assert len(out) == 7
        mask = np.concatenate([m for _, _, m in out], axis=1)
        assert mask.shape == (2, 224)
        assert mask.sum() == 401
        np.testing.assert_array_equal(mask[0], [1] * 212 + [0] * 12)
        np.testing.assert_array_equal(mask[1], [1] * 189 + [0] * 35)
        docs = [d.strip() for d in open(VALID, encoding="utf-8").read().split("\n\n")]
        expected = simulate_streams([b(d) for d in docs], 2)
        assert streams_from_batches(out, 2) == expected
        # Targets are the inputs shifted by one, across batch boundaries too.
        tokens = np.concatenate([x for x, _, _ in out], axis=1)
        targets = np.concatenate([y for _, y, _ in out], axis=1)
        np.testing.assert_array_equal(tokens[:, 1:], targets[:, :-1])

    def test_training_streams_continue_and_are_never_masked(self, tmp_path):
        context = sharding.DataContext(training=True, batch_size=3)
        out = batches(text.lm_input_fn(context, corpus=bytes_corpus(tmp_path)).take(40))
        # 40 batches x 3 x 32 = 3840 targets > the 3407 + 25 of one pass: the data repeats.
        for (x0, y0, m0), (x1, _, _) in zip(out, out[1:], strict=False):
            np.testing.assert_array_equal(m0, np.ones([3, 32]))
            np.testing.assert_array_equal(x1[:, 0], y0[:, -1])  # Row i continues row i.
            np.testing.assert_array_equal(x0[:, 1:], y0[:, :-1])
        np.testing.assert_array_equal(out[0][0][:, 0], [E, E, E])  # Streams start with EOD.
        targets = np.concatenate([y for _, y, _ in out], axis=1)
        assert (targets == E).sum() > 25  # More documents ended than one pass holds.

    def test_group_shards_are_disjoint_and_cover_the_documents(self, tmp_path):
        corpus = bytes_corpus(tmp_path)

        def docs(group):
            context = sharding.DataContext(training=True, group_index=group, num_groups=2)
            return [d.decode() for d in corpus.documents(True, context).as_numpy_iterator()]

        all_docs = [d.decode() for d in corpus.documents(True).as_numpy_iterator()]
        assert len(all_docs) == 25
        g0, g1 = docs(0), docs(1)
        assert g0 == all_docs[0::2] and g1 == all_docs[1::2]
        # Evaluation: every group reads every validation document, in order.
        context = sharding.DataContext(training=False, group_index=1, num_groups=2)
        assert len(list(corpus.documents(False, context).as_numpy_iterator())) == 4

    def test_training_reads_only_its_group_documents(self, tmp_path):
        corpus = bytes_corpus(tmp_path)
        context = sharding.DataContext(training=True, batch_size=2, group_index=1, num_groups=2)
        out = batches(text.lm_input_fn(context, corpus=corpus).take(30))
        tokens = np.concatenate([x for x, _, _ in out], axis=1)
        seen = set()
        for row in tokens.tolist():
            ends = [i for i, t in enumerate(row) if t == E]
            for start, end in zip(ends, ends[1:], strict=False):
                seen.add(bytes(t - 2 for t in row[start + 1 : end]).decode("utf-8"))
        all_docs = [d.decode() for d in corpus.documents(True).as_numpy_iterator()]
        # Whole documents between two EODs are group 1's (odd) documents only.
        assert len(seen) >= 3 and seen <= set(all_docs[1::2])

    def test_replicas_get_their_own_streams(self, tmp_path):
        # Two replicas fed by one pipeline take its batches in turn, so the
        # pipeline interleaves two sets of B=2 streams: element 2k + r is
        # replica r's k-th batch, and equals rows [2r, 2r + 2) of a 4-stream batch.
        corpus = bytes_corpus(tmp_path)
        two = sharding.DataContext(training=False, batch_size=2, replicas_per_pipeline=2)
        four = sharding.DataContext(training=False, batch_size=4)
        out2 = batches(text.lm_input_fn(two, corpus=corpus, sequence_length=8))
        out4 = batches(text.lm_input_fn(four, corpus=corpus, sequence_length=8))
        assert len(out2) == 2 * len(out4)
        for k, (x4, y4, m4) in enumerate(out4):
            for r in range(2):
                x, y, m = out2[2 * k + r]
                np.testing.assert_array_equal(x, x4[2 * r : 2 * r + 2])
                np.testing.assert_array_equal(y, y4[2 * r : 2 * r + 2])
                np.testing.assert_array_equal(m, m4[2 * r : 2 * r + 2])

    def test_file_separator_and_max_eval_documents(self, tmp_path):
        a = write(tmp_path, "a.txt", "one\n\ntwo\n")
        write(tmp_path, "b.txt", "  three  ")
        corpus = bytes_corpus(tmp_path, valid=str(tmp_path / "*.txt"), document_separator="file")
        docs = [d.decode() for d in corpus.documents(False).as_numpy_iterator()]
        assert docs == ["one\n\ntwo", "three"]  # Files in sorted order, stripped.
        context = sharding.DataContext(training=False, batch_size=1)
        out = batches(
            text.lm_input_fn(context, corpus=corpus, sequence_length=4, max_eval_documents=1)
        )
        # First document only: E o n e \n \n t w o E -> 9 targets, 3 windows of 4.
        assert sum(m.sum() for _, _, m in out) == 9 and len(out) == 3
        del a

    def test_eval_batches_pads_or_cuts(self, tmp_path):
        # The 7 validation batches of test_validation_counts_and_masks, made 9
        # (two fully masked batches after them) or cut to 5 (the first 5).
        corpus = bytes_corpus(tmp_path)
        context = sharding.DataContext(training=False, batch_size=2)
        full = batches(text.lm_input_fn(context, corpus=corpus))
        padded = batches(text.lm_input_fn(context, corpus=corpus, eval_batches=9))
        cut = batches(text.lm_input_fn(context, corpus=corpus, eval_batches=5))
        assert len(full) == 7 and len(padded) == 9 and len(cut) == 5
        for got, want in zip(padded[:7] + cut, full + full[:5], strict=True):
            for g, w in zip(got, want, strict=True):
                np.testing.assert_array_equal(g, w)
        for x, y, m in padded[7:]:
            assert not x.any() and not y.any() and not m.any()
        # With two replicas per pipeline the padding keeps their turns: 2 x 9 elements.
        two = sharding.DataContext(training=False, batch_size=1, replicas_per_pipeline=2)
        out = batches(text.lm_input_fn(two, corpus=corpus, eval_batches=9))
        assert len(out) == 18 and sum(m.sum() for _, _, m in out) == 401
        with pytest.raises(ValueError, match="eval_batches"):
            text.lm_input_fn(context, corpus=corpus, eval_batches=0)

    def test_inputs_must_exist(self, tmp_path):
        with pytest.raises(FileNotFoundError, match="no file matches"):
            list(bytes_corpus(tmp_path, train=str(tmp_path / "nothing*.txt")).documents(True))
        corpus = text.TextCorpus(train_files=TRAIN, tokenizer="bytes")
        with pytest.raises(ValueError, match="eval_files is not set"):
            corpus.documents(False)

    @pytest.mark.parametrize(
        "kwargs, message",
        [
            ({}, "exactly one source"),
            ({"train_files": TRAIN, "tfds_name": "lm1b"}, "exactly one source"),
            ({"train_files": TRAIN, "tokenizer": "chars"}, "tokenizer must be one of"),
            ({"train_files": TRAIN, "document_separator": "line"}, "document_separator"),
            ({"train_files": TRAIN, "target_vocab_size": 100}, "target_vocab_size"),
        ],
    )
    def test_bad_configuration(self, kwargs, message):
        with pytest.raises(ValueError, match=message):
            text.TextCorpus(**kwargs)

    def test_sequence_length_checked(self, tmp_path):
        with pytest.raises(ValueError, match="sequence_length"):
            text.lm_input_fn(sharding.DataContext(), bytes_corpus(tmp_path), sequence_length=0)


class TestSplitsAndPieces:
    def test_test_split_reads_test_files(self, tmp_path):
        valid = write(tmp_path, "valid.txt", "val")
        test = write(tmp_path, "test.txt", "tst\n\nxy")
        corpus = bytes_corpus(tmp_path, valid=valid, test_files=test)
        assert [d.decode() for d in corpus.documents(False, split="test").as_numpy_iterator()] == [
            "tst",
            "xy",
        ]
        context = sharding.DataContext(training=False, batch_size=1)
        out = batches(text.lm_input_fn(context, corpus=corpus, eval_split="test"))
        # E t s t E x y E: 7 targets, one window of 32.
        assert len(out) == 1 and out[0][2].sum() == 7
        np.testing.assert_array_equal(out[0][1][0, :7], b("tst") + [E] + b("xy") + [E])
        # Validation is untouched.
        out = batches(text.lm_input_fn(context, corpus=corpus))
        np.testing.assert_array_equal(out[0][1][0, :4], b("val") + [E])

    def test_missing_or_bad_test_split(self, tmp_path):
        corpus = bytes_corpus(tmp_path)
        with pytest.raises(ValueError, match="test_files is not set"):
            corpus.documents(False, split="test")
        with pytest.raises(ValueError, match="eval_split must be one of"):
            text.lm_input_fn(sharding.DataContext(training=False), corpus, eval_split="valid")
        with pytest.raises(ValueError, match="test_files"):
            text.TextCorpus(tfds_name="lm1b", test_files=VALID)

    def test_pieces_by_hand(self):
        # Document 0 "abcdefghij" + EOD = 11 tokens, pieces of 4: [a-d] [e-h] [i j E];
        # document 1 "klm" + EOD: one piece. Every 2nd piece, shifted by the
        # document's index: doc 0 keeps pieces 0 and 2, doc 1 keeps none
        # ((0 + 1) % 2 != 0). Context 2: piece 2 comes after "gh" (input only);
        # piece 0 stops before its document's end: an input-only EOD follows.
        docs = tf.data.Dataset.from_tensor_slices(["abcdefghij", "klm"])
        tokens = text.TextCorpus(train_files=TRAIN, tokenizer="bytes").tokenize(docs)
        got = [
            s.numpy().tolist() for s in text.evaluation_pieces(tokens, 4, every=2, context_tokens=2)
        ]
        only = text._INPUT_ONLY
        assert got == [b("abcd") + [E + only], [c + only for c in b("gh")] + b("ij") + [E]]

    def test_pieces_through_the_input_fn(self, tmp_path):
        # The two segments above in one stream, windows of 8 (parentheses: input only):
        #   E a b c d (E) (g) (h) | i j E
        # Targets a b c d i j E are scored (7); (E) (g) (h) are inputs only.
        valid = write(tmp_path, "v.txt", "abcdefghij\n\nklm")
        corpus = bytes_corpus(tmp_path, valid=valid)
        context = sharding.DataContext(training=False, batch_size=1)
        out = batches(
            text.lm_input_fn(
                context,
                corpus=corpus,
                sequence_length=8,
                eval_piece_tokens=4,
                eval_piece_every=2,
                eval_piece_context=2,
            )
        )
        assert len(out) == 2
        x = np.concatenate([x for x, _, _ in out], axis=1)[0]
        y = np.concatenate([y for _, y, _ in out], axis=1)[0]
        m = np.concatenate([m for _, _, m in out], axis=1)[0]
        # The stream E a b c d (E) (g) (h) i j E, then padding; targets are it shifted by one.
        np.testing.assert_array_equal(x[:11], [E] + b("abcd") + [E] + b("ghij") + [E])
        np.testing.assert_array_equal(y[:10], b("abcd") + [E] + b("ghij") + [E])
        np.testing.assert_array_equal(m, [1, 1, 1, 1, 0, 0, 0, 1, 1, 1] + [0] * 6)

    def test_one_piece_per_document_is_the_whole_documents(self, tmp_path):
        context = sharding.DataContext(training=False, batch_size=2)
        corpus = bytes_corpus(tmp_path)
        whole = batches(text.lm_input_fn(context, corpus=corpus))
        pieces = batches(
            text.lm_input_fn(context, corpus=corpus, eval_piece_tokens=10_000, eval_piece_every=1)
        )
        assert len(whole) == len(pieces)
        for got, want in zip(pieces, whole, strict=True):
            for g, w in zip(got, want, strict=True):
                np.testing.assert_array_equal(g, w)

    def test_pieces_sample_every_document_and_count_their_tokens(self, tmp_path):
        # valid.txt's 4 documents hold 98 + 100 + 112 + 87 bytes, + 4 EODs:
        # 99, 101, 113, 88 tokens. Pieces of 10, every 3rd, shifted by the
        # document's index: doc d keeps pieces j with (j + d) % 3 == 0:
        #   doc 0 (99):  j = 0, 3, 6, 9      -> 10 + 10 + 10 + 9 = 39
        #   doc 1 (101): j = 2, 5, 8         -> 30
        #   doc 2 (113): j = 1, 4, 7, 10     -> 10 + 10 + 10 + 10 = 40
        #   doc 3 (88):  j = 0, 3, 6         -> 30
        # 139 scored targets, whatever the context and the number of streams.
        corpus = bytes_corpus(tmp_path)
        for streams, context_tokens in ((1, 0), (3, 5)):
            context = sharding.DataContext(training=False, batch_size=streams)
            out = batches(
                text.lm_input_fn(
                    context,
                    corpus=corpus,
                    eval_piece_tokens=10,
                    eval_piece_every=3,
                    eval_piece_context=context_tokens,
                )
            )
            assert sum(m.sum() for _, _, m in out) == 139
            ids = np.concatenate([np.concatenate([x, y], axis=1) for x, y, _ in out])
            assert ids.max() < corpus.vocab_size  # No input-only marks left.

    def test_cached_evaluation_is_read_once(self, tmp_path):
        # With cache_eval, a second pass gives the same batches without the files
        # (deleted here); without it, the second pass reads them again.
        valid = tmp_path / "valid.txt"
        valid.write_bytes(open(VALID, "rb").read())
        context = sharding.DataContext(training=False, batch_size=2)
        cached = text.lm_input_fn(
            context, bytes_corpus(tmp_path, valid=str(valid)), cache_eval=True
        )
        read = text.lm_input_fn(context, bytes_corpus(tmp_path, valid=str(valid)))
        first = batches(cached)
        assert len(first) == len(batches(read)) == 7
        valid.unlink()
        again = batches(cached)
        for got, want in zip(again, first, strict=True):
            for g, w in zip(got, want, strict=True):
                np.testing.assert_array_equal(g, w)
        with pytest.raises(tf.errors.NotFoundError):
            batches(read)

    def test_bad_piece_settings(self, tmp_path):
        corpus = bytes_corpus(tmp_path)
        for kwargs, message in (
            ({"eval_piece_tokens": 0}, "eval_piece_tokens must be an integer >= 1"),
            ({"eval_piece_tokens": 8, "eval_piece_every": 0}, "eval_piece_every"),
            ({"eval_piece_tokens": 8, "eval_piece_context": -1}, "eval_piece_context"),
        ):
            with pytest.raises(ValueError, match=message):
                # Training pipelines check them too: the mistake shows at the start.
                text.lm_input_fn(sharding.DataContext(training=True), corpus, **kwargs)


class TestSubwordVocabulary:
    def committed(self):
        with open(os.path.join(FIXTURE, "subword300.vocab.json"), encoding="utf-8") as f:
            return json.load(f)

    def corpus(self, vocab_dir):
        # As gin/lm/tiny.gin configures it (paths relative to the repository root).
        return text.TextCorpus(
            train_files="testdata/text/train.txt",
            eval_files="testdata/text/valid.txt",
            target_vocab_size=300,
            vocab_max_corpus_chars=100000,
            vocab_dir=vocab_dir,
        )

    def test_build_is_deterministic_and_matches_the_committed_file(self, tmp_path, monkeypatch):
        monkeypatch.chdir(testing.repo_root())
        corpus = self.corpus(str(tmp_path))
        built = corpus.vocabulary()
        assert os.path.exists(tmp_path / "subword300.vocab.json")
        assert built == self.committed()
        # Ids: 0 PAD, 1 EOD, then the encoder's 1.. (44 word pieces + 256 bytes) shifted by one.
        assert corpus.vocab_size == 302 == len(built["subwords"]) + 256 + 2
        counts = corpus.unigram_counts()
        assert counts[text.PAD_ID] == 0 and counts[text.EOD_ID] == 25  # One per document.
        unigram = text.unigram_distribution(corpus)
        assert unigram.shape == (302,) and abs(unigram.sum() - 1) < 1e-6
        assert unigram[text.EOD_ID] == pytest.approx(25 / counts.sum())

    def test_encoding_round_trips_and_counts_match_an_independent_packing(self, monkeypatch):
        monkeypatch.chdir(testing.repo_root())
        corpus = self.corpus(None)  # Reads the committed vocabulary next to the data.
        encode = corpus.encoder()
        docs = [d.strip() for d in open(VALID, encoding="utf-8").read().split("\n\n")]
        ids = [encode(d) for d in docs]
        assert all(ids_.min() >= 2 for ids_ in ids)  # No PAD or EOD inside documents.
        assert corpus.decode(np.concatenate([ids[0], [E]])) == docs[0] + "<eod>"
        # Word pieces are fewer than bytes (397 bytes in valid.txt).
        assert sum(len(i) for i in ids) < 397
        context = sharding.DataContext(training=False, batch_size=3)
        out = batches(text.lm_input_fn(context, corpus=corpus, sequence_length=16))
        assert streams_from_batches(out, 3) == simulate_streams(ids, 3)
        assert sum(m.sum() for _, _, m in out) == sum(len(i) + 1 for i in ids)

    def test_vocabulary_built_with_other_settings_is_refused(self, tmp_path, monkeypatch):
        monkeypatch.chdir(testing.repo_root())
        vocab = self.committed()
        vocab["build"]["vocab_max_corpus_chars"] = 5
        (tmp_path / "subword300.vocab.json").write_text(json.dumps(vocab))
        with pytest.raises(ValueError, match="was built with"):
            self.corpus(str(tmp_path)).vocabulary()


def store_tfds_text(data_dir, name="tiny_text"):
    features = tfds.features.FeaturesDict({"text": tfds.features.Text()})
    splits = {
        "train": ["alpha", "beta", "gamma", "delta"],
        "validation": ["one two", "three"],
    }
    tfds.dataset_builders.store_as_tfds_dataset(
        name=name,
        version="1.0.0",
        data_dir=str(data_dir),
        features=features,
        split_datasets={
            k: tf.data.Dataset.from_tensor_slices({"text": v}) for k, v in splits.items()
        },
    )


class TestTfds:
    def test_prepared_dataset(self, tmp_path):
        store_tfds_text(tmp_path / "data")
        corpus = text.TextCorpus(
            tfds_name="tiny_text", tfds_data_dir=str(tmp_path / "data"), tokenizer="bytes"
        )
        # Group g of 2 reads train[50g%:50(g+1)%]: the g-th half in storage order
        # (TFDS stores the examples shuffled).
        stored = [d.decode() for d in corpus.documents(True).as_numpy_iterator()]
        assert sorted(stored) == ["alpha", "beta", "delta", "gamma"]
        for group in (0, 1):
            context = sharding.DataContext(training=True, group_index=group, num_groups=2)
            got = sorted(d.decode() for d in corpus.documents(True, context).as_numpy_iterator())
            assert got == sorted(stored[2 * group : 2 * group + 2])
        # Evaluation: "one two" (7 bytes) and "three" (5) in two streams of L=4:
        # row 0: E o n e _ t w o E (8 targets), row 1: E t h r e e E (6 targets).
        context = sharding.DataContext(training=False, batch_size=2, group_index=1, num_groups=2)
        out = batches(text.lm_input_fn(context, corpus=corpus, sequence_length=4))
        assert len(out) == 2
        np.testing.assert_array_equal(out[0][0], [[E] + b("one"), [E] + b("thr")])
        np.testing.assert_array_equal(out[1][2], [[1, 1, 1, 1], [1, 1, 0, 0]])
        # The vocabulary (with its unigram counts) goes next to the data.
        assert corpus.vocab_path.startswith(str(tmp_path / "data" / "tf_codistill_vocab"))
        counts = corpus.unigram_counts()
        assert counts[text.EOD_ID] == 4 and counts.sum() == len("alphabetagammadelta") + 4
        assert os.path.exists(corpus.vocab_path)

    def test_missing_dataset_says_how_to_prepare_it(self, tmp_path):
        corpus = text.TextCorpus(tfds_name="lm1b", tfds_data_dir=str(tmp_path), tokenizer="bytes")
        with pytest.raises(FileNotFoundError, match="tfds build lm1b") as info:
            corpus.documents(True)
        assert "not prepared" in str(info.value) and "Nothing is downloaded" in str(info.value)

    def test_wrong_text_key(self, tmp_path):
        store_tfds_text(tmp_path)
        corpus = text.TextCorpus(
            tfds_name="tiny_text", tfds_data_dir=str(tmp_path), text_key="body", tokenizer="bytes"
        )
        with pytest.raises(ValueError, match="no feature 'body'"):
            corpus.documents(True)

    def test_lm1b_layout_with_mock_data(self, tmp_path):
        with tfds.testing.mock_data(num_examples=6):
            corpus = text.TextCorpus(
                tfds_name="lm1b",
                tfds_data_dir=str(tmp_path),
                tfds_eval_split="test",
                tokenizer="bytes",
            )
            docs = [d for d in corpus.documents(False).as_numpy_iterator()]
            context = sharding.DataContext(training=False, batch_size=2)
            out = batches(text.lm_input_fn(context, corpus=corpus, sequence_length=8))
        assert len(docs) == 6
        assert sum(m.sum() for _, _, m in out) == sum(len(d) + 1 for d in docs)
