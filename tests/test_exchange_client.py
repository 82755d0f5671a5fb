"""exchange_client: the group's side of the exchange, outside the model's tracked state."""

from unittest import mock

import pytest
import tensorflow as tf
from absl import logging as absl_logging

from tf_codistill import distribute
from tf_codistill import errors
from tf_codistill import exchange
from tf_codistill import exchange_client
from tf_codistill import testing


def _model(exchange_dir, **kwargs):
    return testing.codistill_model(exchange_dir, **kwargs)


def test_background_reads_by_default_in_single_process_groups_only():
    strategy = tf.distribute.get_strategy()
    assert exchange_client.background_mode(None, strategy)
    assert not exchange_client.background_mode(False, strategy)
    with mock.patch.object(distribute, "num_workers", return_value=2):
        assert not exchange_client.background_mode(None, strategy)
        with pytest.raises(errors.ConfigError, match="needs a single-process group"):
            exchange_client.background_mode(True, strategy)


@pytest.mark.parametrize("background", [False, True])
def test_publisher_and_staging_copy_stay_out_of_the_model_and_its_backups(tmp_path, background):
    model = _model(str(tmp_path / "run"), background_publish=background)
    assert model.exchange_client.publishing and model.exchange_client.peers == (1,)
    client = model.exchange_client
    # pylint: disable=protected-access
    publisher = client._publisher
    hidden = [*client._loaders[1].staging.weights]
    if background:
        # The publisher writes a snapshot, itself hidden.
        assert isinstance(publisher, exchange.BackgroundPublisher)
        hidden += [publisher._publisher._step, *publisher._targets]
    else:
        assert isinstance(publisher, exchange.Publisher)
        hidden += [publisher._step]
    assert not {v.ref() for v in hidden} & {v.ref() for v in model.weights}
    model.save_weights(str(tmp_path / "backup" / "w"))
    keys = [k for k, _ in tf.train.list_variables(str(tmp_path / "backup"))]
    assert any(k.startswith("teacher_pool/") for k in keys)
    assert not [k for k in keys if "exchange_client" in k or "published_step" in k]


def test_logs_count_teachers_in_use_and_stale_ones(tmp_path):
    exchange.Publisher(testing.mlp(seed=1), exchange.group_dir(str(tmp_path), 1)).publish(2)
    model = _model(str(tmp_path), max_staleness_steps=5)
    client = model.exchange_client
    assert client.logs(0) == {
        "teachers_in_use": 0.0,
        "stale_peers": 0.0,
        "peer_reload_failures": 0.0,
        "teachers_dropped": 0.0,
    }
    (outcome,) = client.reload()
    assert (outcome.peer, outcome.status, outcome.step, outcome.staleness) == (1, "loaded", 2, -2)
    assert client.logs(7)["teachers_in_use"] == 1.0
    assert client.logs(8)["stale_peers"] == 1.0  # 8 - 2 > 5
    assert client.reload()[0].status == "unchanged"
    assert client.reload_counts == {1: {"loaded": 1, "failed": 0}}


def test_a_step_published_before_a_restart_is_kept(tmp_path, caplog, request):
    model = _model(str(tmp_path))
    first = model.publish()
    caplog.set_level("INFO")
    # absl's logger has its own level (--verbosity), which an earlier test may
    # have raised: INFO for this test.
    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.INFO)
    request.addfinalizer(lambda: absl_logging.set_verbosity(verbosity))
    restarted = _model(str(tmp_path))
    assert restarted.publish() == first
    assert "step 0 was published before this process started; kept as it is" in caplog.text


def test_a_group_without_peers_publishes_and_reads_nothing(tmp_path):
    model = _model(str(tmp_path), peer_indices=[])
    client = model.exchange_client
    assert (client.peers, client.background, model.teacher_pool.num_slots) == ((), False, 0)
    assert client.reload() == [] and client.poll() == [] and client.logs(3) == {}
    assert client.publish().endswith("group_0/ckpt-0")
