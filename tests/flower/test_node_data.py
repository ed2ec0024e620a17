"""Nodes that hold their own data (node config ``data``): the run's data schema from the hello, labels by class name."""

import json

import numpy as np
import pytest
from digits_cnn import digits_cnn_toml, write_partitions
from direct_link import FreshProcessLink
from safetensors.numpy import load_file

from secure_ffm.config import DataConfig, load_config
from secure_ffm.data.node import DataSchema, load_node_data
from secure_ffm.engine.codec import pack, unpack
from secure_ffm.errors import ConfigError
from secure_ffm.run.deployment import server_run
from secure_ffm.run.simulation import Simulation, prepare_run, without_timings
from secure_ffm.transports.remote import DeploymentError

BASE = digits_cnn_toml()


def config_of(tmp_path, text):
    path = tmp_path / "c.toml"
    path.write_text(text)
    return load_config(path)


def rows(run):
    return [without_timings(json.loads(line)) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_nodes_with_their_own_files_of_the_partitions_equal_the_in_process_run_bitwise(tmp_path):
    config = config_of(tmp_path, BASE)
    prepared = prepare_run(config)
    Simulation(prepared, out_dir=tmp_path / "local").run()
    paths = write_partitions(prepared, tmp_path / "nodes")
    link = FreshProcessLink(config, {0: 0, 1: 1, 2: 2}, data_paths={0: paths[0], 1: paths[1], 2: paths[2]})
    server_run(config, link, out_dir=tmp_path / "remote")
    assert rows(tmp_path / "remote") == rows(tmp_path / "local")
    local, remote = load_file(str(tmp_path / "local" / "model.safetensors")), load_file(str(tmp_path / "remote" / "model.safetensors"))
    assert all(np.array_equal(local[k], remote[k]) for k in local)


def test_a_node_with_dp_sgd_plans_its_budget_from_its_own_number_of_examples(tmp_path):
    config = config_of(tmp_path, BASE + '[privacy]\nmode = "dp-sgd"\ntarget_epsilon = 8.0\n')
    prepared = prepare_run(config)
    paths = write_partitions(prepared, tmp_path / "nodes")
    small = tmp_path / "small.npz"  # node 2 holds 40 examples only
    with np.load(paths[2]) as archive:
        np.savez(
            small, x_train=archive["x_train"][:39], y_train=archive["y_train"][:39], x_test=archive["x_test"], y_test=archive["y_test"]
        )
    link = FreshProcessLink(config, {0: 0, 1: 1, 2: 2}, data_paths={0: paths[0], 1: paths[1], 2: str(small)})
    server_run(config, link, out_dir=tmp_path / "remote")
    ledger = {c["client"]: c for c in json.loads((tmp_path / "remote" / "privacy.json").read_text())["clients"]}
    assert ledger[2]["num_examples"] == 40
    assert ledger[2]["sample_rate"] == pytest.approx(16 / 40)
    assert all(0 < c["epsilon"] <= 8.0 for c in ledger.values())
    # clients.json describes the nodes by what they told the server, not by the server's partitions of data.dataset
    clients = json.loads((tmp_path / "remote" / "clients.json").read_text())["clients"]
    assert [(c["num_examples"], c["label_histogram"], c.get("own_data")) for c in clients][2] == (40, None, True)
    assert all(c["own_data"] and c["label_histogram"] is None for c in clients)


def test_a_node_whose_labels_the_run_does_not_have_is_refused_without_telling_the_server_its_labels(tmp_path, caplog):
    config = config_of(tmp_path, BASE)
    paths = write_partitions(prepare_run(config), tmp_path / "nodes")
    with np.load(paths[1]) as archive:
        wrong = {key: archive[key] for key in archive.files}
    wrong["y_train"] = np.where(wrong["y_train"] == "3", "cat", wrong["y_train"])
    np.savez(tmp_path / "wrong.npz", **wrong)
    link = FreshProcessLink(config, {0: 0, 1: 1, 2: 2}, data_paths={0: paths[0], 1: str(tmp_path / "wrong.npz"), 2: paths[2]})
    with pytest.raises(DeploymentError, match=r"node 1: .*node-config data: this node's data does not fit") as error:
        server_run(config, link, out_dir=tmp_path / "remote")
    assert "node 0" not in str(error.value) and "node 2" not in str(error.value)
    # the refusal reaches the server; the node's labels and file name stay in the node's own log (a server that sent a
    # schema of one class would otherwise learn every class the node holds)
    assert "cat" not in str(error.value) and "wrong.npz" not in str(error.value)
    assert "'cat'" in caplog.text and "wrong.npz" in caplog.text
    assert not (tmp_path / "remote").exists()


def test_a_missing_data_path_names_the_node_config_key(tmp_path):
    config = config_of(tmp_path, BASE)
    schema = DataSchema.of(prepare_run(config).data.dataset)
    with pytest.raises(ConfigError, match=r"^node-config data: .*does not exist"):
        load_node_data(config.data, str(tmp_path / "nowhere.npz"), schema, seed=0)


def test_images_of_another_size_are_refused(tmp_path):
    config = config_of(tmp_path, BASE)
    schema = DataSchema.of(prepare_run(config).data.dataset)
    np.savez(tmp_path / "big.npz", x=np.random.default_rng(0).integers(0, 256, (20, 32, 32), dtype=np.uint8), y=np.arange(20) % 10)
    with pytest.raises(ConfigError, match=r"shape \(1, 32, 32\).*\(1, 28, 28\)"):
        load_node_data(config.data, str(tmp_path / "big.npz"), schema, seed=0)


def test_text_labels_map_to_the_runs_class_ids_by_name_and_every_row_trains(tmp_path):
    table = tmp_path / "node.csv"
    table.write_text("text,label\nfirst,c\nsecond,a\nthird,c\nfourth,a\nfifth,c\n")
    schema = DataSchema(name="x", kind="text", class_names=("a", "b", "c"), labeled=True)
    data = load_node_data(DataConfig(dataset="x", num_clients=2), str(table), schema, seed=0)
    assert len(data) == 5
    assert sorted(zip(data.inputs, data.labels.tolist(), strict=True)) == [
        ("fifth", 2),
        ("first", 2),
        ("fourth", 0),
        ("second", 0),
        ("third", 2),
    ]


def test_distributed_dp_sgd_is_refused_on_nodes_with_their_own_data(tmp_path):
    from secure_ffm.run.deployment import check_node_data

    config = config_of(tmp_path, BASE + '[privacy]\nmode = "distributed-dp-sgd"\ntarget_epsilon = 8.0\n')
    with pytest.raises(ConfigError, match=r"^privacy.mode: .*every client's number of examples"):
        check_node_data(config)


def test_the_schema_crosses_the_wire_and_a_malformed_one_is_refused():
    schema = DataSchema(name="d", kind="image", class_names=("0", "1"), labeled=True, image_shape=(1, 28, 28), mean=(0.2,), std=(0.3,))
    assert unpack(*pack({"schema": schema}))["schema"] == schema
    with pytest.raises(ValueError, match="image_shape"):
        DataSchema(name="d", kind="image", class_names=("0",), labeled=True)
    with pytest.raises(ValueError, match="distinct"):
        DataSchema(name="d", kind="text", class_names=("a", "a"), labeled=True)


def test_deploy_refuses_node_data_that_does_not_give_every_client_a_path_exit_2(tmp_path, capsys):
    from secure_ffm.run.cli import main

    config = tmp_path / "c.toml"
    config.write_text(BASE)
    (tmp_path / "a.npz").write_bytes(b"")
    code = main(["deploy", str(config), "--out", str(tmp_path / "run"), "--quiet", "--node-data", str(tmp_path / "a.npz")])
    assert code == 2
    expected = "--node-data: gives 1 paths for 3 clients (data.num_clients) (pass --node-data once per client, 3 times)"
    assert capsys.readouterr().err.strip().endswith(expected)
    assert not (tmp_path / "run").exists()
