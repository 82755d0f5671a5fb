"""peer_selection: the rules, and groups that keep one teacher whatever the number of peers."""

import collections
import re

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from absl import logging as absl_logging

import tf_codistill
from tf_codistill import errors
from tf_codistill import exchange
from tf_codistill import peer_selection
from tf_codistill import testing

PEERS = (1, 2, 3)


def test_all_peers_is_one_slot_per_peer_always():
    rule = peer_selection.AllPeers()
    assert rule.num_slots(3) == 3 and rule.num_slots(0) == 0
    assert {rule.select(PEERS, i, group_index=0) for i in range(5)} == {PEERS}


def test_round_robin_visits_the_peers_in_turn():
    rule = peer_selection.RoundRobin()
    assert rule.num_slots(3) == 1
    assert [rule.select(PEERS, i, 0) for i in range(7)] == [
        (1,),
        (2,),
        (3,),
        (1,),
        (2,),
        (3,),
        (1,),
    ]


def test_random_peer_is_a_function_of_seed_group_and_interval():
    rule = peer_selection.RandomPeer(seed=5)
    assert rule.num_slots(3) == 1 and rule.num_slots(0) == 0
    draws = [rule.select(PEERS, i, 0) for i in range(600)]
    # Every worker of a group (another instance, another process) draws the same.
    assert draws == [peer_selection.RandomPeer(seed=5).select(PEERS, i, 0) for i in range(600)]
    # Uniform over the peers: each about 200 of 600 (binomial sd ~12).
    counts = collections.Counter(p for (p,) in draws)
    assert set(counts) == set(PEERS) and all(150 < c < 250 for c in counts.values()), counts
    # Another seed, or another group, draws otherwise.
    assert draws != [peer_selection.RandomPeer(seed=6).select(PEERS, i, 0) for i in range(600)]
    assert draws != [rule.select(PEERS, i, 1) for i in range(600)]


def test_rules_by_name_and_bad_rules():
    assert peer_selection.get(None) == peer_selection.AllPeers()
    assert peer_selection.get("round_robin") == peer_selection.RoundRobin()
    assert peer_selection.get("random_peer") == peer_selection.RandomPeer(0)
    rule = peer_selection.RandomPeer(3)
    assert peer_selection.get(rule) is rule
    with pytest.raises(errors.ConfigError, match="Unknown peer_selection 'best'"):
        peer_selection.get("best")
    with pytest.raises(errors.ConfigTypeError, match="peer_selection must be a name"):
        peer_selection.get(3)
    with pytest.raises(errors.ConfigError, match="RandomPeer seed must be an integer >= 0"):
        peer_selection.RandomPeer(-1)


def test_a_custom_rule_returning_other_peers_is_refused():
    class Outsider(peer_selection.RoundRobin):
        def select(self, peers, interval, group_index):
            return (9,)

    with pytest.raises(errors.ConfigError, match=re.escape("returned (9,) for peers (1, 2, 3)")):
        peer_selection.check_selection(Outsider(), PEERS, 0, 0)


def test_peers_of_a_group():
    assert peer_selection.resolve_peers(1, 3) == (0, 2)
    assert peer_selection.resolve_peers(1, 3, []) == ()
    with pytest.raises(errors.ConfigError, match="peer_indices must name other groups"):
        peer_selection.resolve_peers(1, 3, [1])


class OneTeacherForManyPeersTest(tf.test.TestCase):
    """Four groups: group 0 keeps one teacher, filled from the peer the rule picks."""

    def setUp(self):
        super().setUp()
        self.dir = self.create_tempdir().full_path
        self.peers = {g: testing.mlp(seed=g) for g in PEERS}
        for g, peer in self.peers.items():
            exchange.Publisher(peer, exchange.group_dir(self.dir, g)).publish(100 * g)
        x, y = testing.toy_classification(16 * 12)
        self.dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)

    def _fit(self, rule, background):
        model = tf_codistill.CodistillModel(
            testing.mlp(seed=0),
            group_index=0,
            num_groups=4,
            exchange_dir=self.dir,
            burn_in_steps=0,
            exchange_every_n_steps=3,
            peer_selection=rule,
            background_reload=background,
        )
        model.compile(
            keras.optimizers.SGD(0.1),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        # Every reload after a peer's first is logged at DEBUG: absl's own
        # level (from --verbosity, which another test may have set) too.
        verbosity = absl_logging.get_verbosity()
        absl_logging.set_verbosity(absl_logging.DEBUG)
        try:
            with self.assertLogs(level="DEBUG") as logs:
                model.fit(self.dataset.take(2), verbose=0)  # Traces the step.
                traces = model.train_function.experimental_get_tracing_count()
                history = model.fit(self.dataset, verbose=0).history
        finally:
            absl_logging.set_verbosity(verbosity)
        self.assertEqual(model.train_function.experimental_get_tracing_count(), traces)
        loaded = [
            int(re.search(r"teacher for peer (\d) <-", line)[1])
            for line in logs.output
            if "teacher for peer" in line and "<- step" in line
        ]
        return model, history, loaded

    def test_round_robin_loads_one_peer_per_interval_into_one_teacher(self):
        for background in (False, True):
            model, history, loaded = self._fit("round_robin", background)
            self.assertEqual((model.teacher_pool.num_slots, len(model.teachers)), (1, 1))
            self.assertEqual(model.teacher_pool.buffers, 2 if background else 1)
            # 14 steps, intervals of 3: the peers in turn, each when its turn comes.
            self.assertEqual(loaded[:4], [1, 2, 3, 1])
            self.assertGreater(history["distill_loss"][0], 0.0)
            # The slot holds the peer of the last interval, bit for bit.
            (peer,) = model.teacher_pool.teacher_peers.numpy()
            (step,) = model.teacher_steps
            self.assertEqual(step, 100 * peer)
            for a, b in zip(
                model.teachers[0].get_weights(), self.peers[peer].get_weights(), strict=True
            ):
                self.assertAllEqual(a, b)
            self.assertEqual(model.reload_counts[peer]["failed"], 0)

    def test_random_peer_loads_the_drawn_peers(self):
        rule = peer_selection.RandomPeer(seed=1)
        model, _, loaded = self._fit(rule, background=False)
        # Intervals 0..4 (steps 0-14 of 3): consecutive repeats load nothing new.
        drawn = [rule.select(PEERS, i, 0)[0] for i in range(5)]
        expected = [p for i, p in enumerate(drawn) if i == 0 or p != drawn[i - 1]]
        self.assertEqual(loaded, expected)
        self.assertEqual(list(model.teacher_pool.teacher_peers.numpy()), [drawn[-1]])
        self.assertLen(model.teachers, 1)
        self.assertTrue(all(np.all(np.isfinite(w)) for w in model.student.get_weights()))
