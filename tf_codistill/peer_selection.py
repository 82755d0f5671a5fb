"""Which peers a group learns from in each exchange interval.

A group keeps its teachers in *slots* (`teachers.TeacherPool`): each slot is
one frozen copy of a peer's student (two with background reloads). A rule
says how many slots there are and, for each exchange interval, which peer
each slot should hold; the group then loads that peer's latest checkpoint
into the slot at its next reload, and the train step averages the slots'
predictions. A slot whose peer has no usable checkpoint keeps what it held.

* `AllPeers` (the paper, the default): one slot per peer, every peer in
  every interval. Teacher memory and reload cost grow with the number of
  peers.
* `RandomPeer`: one slot; each interval, one peer drawn at random. Memory
  and cost are those of one teacher for any number of groups.
* `RoundRobin`: one slot; the peers in turn, one per interval.

A rule is a plain Python object evaluated on the host between steps: it
decides from the interval's index alone (no device reads, no collectives),
so every worker of a multi-worker group makes the same choice, and a group
restarted at some step makes the choice it would have made there.

A new rule subclasses `PeerSelection` (and is registered for gin in
`configurables.py`).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Optional
from typing import Union

import numpy as np

from tf_codistill import errors

__all__ = [
    "AllPeers",
    "PeerSelection",
    "RandomPeer",
    "RoundRobin",
    "check_selection",
    "get",
    "resolve_peers",
]


class PeerSelection(abc.ABC):
    """A rule mapping an exchange interval to the peer each teacher slot holds."""

    @abc.abstractmethod
    def num_slots(self, num_peers: int) -> int:
        """How many teacher slots a group with `num_peers` peers keeps (0 with no peer)."""

    @abc.abstractmethod
    def select(self, peers: Sequence[int], interval: int, group_index: int) -> tuple[int, ...]:
        """The peer each slot should hold during exchange interval `interval`.

        Args:
          peers: the group's peers (group indices), in a fixed order; not empty.
          interval: index of the exchange interval (own step // interval
            length), >= 0.
          group_index: the group choosing (a seed for random rules, so that
            groups do not all pick alike).

        Returns:
          One peer of `peers` per slot (`num_slots(len(peers))` of them).
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash((type(self), tuple(sorted(vars(self).items()))))


class AllPeers(PeerSelection):
    """Every peer, always: slot k holds `peers[k]` (Anil et al., 2018)."""

    def num_slots(self, num_peers):
        return num_peers

    def select(self, peers, interval, group_index):
        del interval, group_index
        return tuple(peers)


class RandomPeer(PeerSelection):
    """One slot; each exchange interval, one peer drawn uniformly at random.

    The draw depends only on `(seed, group_index, interval)`, so the workers
    of a group agree on it and a restarted group draws as before.

    Args:
      seed: seed of the draws.
    """

    def __init__(self, seed: int = 0):
        self.seed = errors.check_int("RandomPeer seed", seed, minimum=0)

    def num_slots(self, num_peers):
        return min(1, num_peers)

    def select(self, peers, interval, group_index):
        rng = np.random.default_rng([self.seed, int(group_index), int(interval)])
        return (peers[int(rng.integers(len(peers)))],)

    def __repr__(self):
        return f"RandomPeer(seed={self.seed})"


class RoundRobin(PeerSelection):
    """One slot; the peers in turn, `peers[interval % len(peers)]`."""

    def num_slots(self, num_peers):
        return min(1, num_peers)

    def select(self, peers, interval, group_index):
        del group_index
        return (peers[int(interval) % len(peers)],)


_NAMES = {"all_peers": AllPeers, "random_peer": RandomPeer, "round_robin": RoundRobin}


def get(rule: Union[None, str, PeerSelection]) -> PeerSelection:
    """A rule from a name (`all_peers`, `random_peer`, `round_robin`), an instance, or None (all).

    Raises:
      errors.ConfigError: an unknown name.
      errors.ConfigTypeError: neither a name nor a `PeerSelection`.
    """
    if rule is None:
        return AllPeers()
    if isinstance(rule, PeerSelection):
        return rule
    if isinstance(rule, str):
        if rule in _NAMES:
            return _NAMES[rule]()
        raise errors.ConfigError(
            f"Unknown peer_selection {rule!r}; expected one of {sorted(_NAMES)} or a "
            "tf_codistill.peer_selection.PeerSelection"
        )
    raise errors.ConfigTypeError(
        "peer_selection must be a name or a tf_codistill.peer_selection.PeerSelection, got "
        f"{type(rule).__name__}: {rule!r}"
    )


def check_selection(
    rule: PeerSelection, peers: Sequence[int], interval: int, group_index: int
) -> tuple[int, ...]:
    """`rule.select(...)`, checked: one peer of `peers` per slot.

    Raises:
      errors.ConfigError: the rule returned something else (a bug in a custom rule).
    """
    chosen = tuple(int(p) for p in rule.select(tuple(peers), interval, group_index))
    expected: Optional[int] = rule.num_slots(len(peers))
    if len(chosen) != expected or any(p not in peers for p in chosen):
        raise errors.ConfigError(
            f"{rule!r}.select returned {chosen} for peers {tuple(peers)}: expected "
            f"{expected} of them, one per teacher slot"
        )
    return chosen


def resolve_peers(
    group_index: int, num_groups: int, peer_indices: Optional[Sequence[int]] = None
) -> tuple[int, ...]:
    """The groups group `group_index` learns from: `peer_indices`, checked, or every other group.

    Raises:
      errors.ConfigError: a peer out of range, the group itself, or a duplicate.
    """
    if peer_indices is None:
        return tuple(j for j in range(num_groups) if j != group_index)
    peers = [errors.check_int("peer_indices entry", j, minimum=0) for j in peer_indices]
    for j in peers:
        if j >= num_groups or j == group_index:
            raise errors.ConfigError(
                f"peer_indices must name other groups in [0, {num_groups}), got {j} "
                f"(this is group {group_index})"
            )
    if len(set(peers)) != len(peers):
        raise errors.ConfigError(f"peer_indices has duplicates: {list(peer_indices)}")
    return tuple(peers)
