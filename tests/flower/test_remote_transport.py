"""The remote transport and node sessions, through a link that rebuilds each node per message (no Flower processes)."""

import dataclasses
import json

import numpy as np
import pytest
from digits_cnn import digits_cnn_toml, two_stage_continual
from direct_link import FreshProcessLink
from safetensors.numpy import load_file

from secure_ffm.config import load_config
from secure_ffm.engine.codec import from_bytes, pack, unpack
from secure_ffm.errors import ConfigError
from secure_ffm.run.deployment import server_run
from secure_ffm.run.simulation import Simulation, prepare_run, without_timings
from secure_ffm.transports.remote import EVALUATE, FIT, HELLO, DeploymentError, LinkReply

BASE = digits_cnn_toml()

MASKING = '[secure_aggregation]\nprotocol = "masking"\n'
REPRODUCIBLE = "[privacy]\nreproducible_noise = true\n"


def rewritten(change):
    """A :class:`TamperingLink` ``tamper`` that rewrites the unpacked answer: ``change(answer) -> answer``."""
    return lambda packed: pack(change(unpack(*packed)))


def config_of(tmp_path, text, name="c.toml"):
    path = tmp_path / name
    path.write_text(text)
    return load_config(path)


def in_process(config, out):
    return Simulation(prepare_run(config), out_dir=out).run()


def rows(run):
    return [without_timings(json.loads(line)) for line in (run / "metrics.jsonl").read_text().splitlines()]


def final_weights(run):
    return load_file(str(run / "model.safetensors"))


def test_plaintext_over_the_link_equals_the_in_process_run_bitwise(tmp_path):
    config = config_of(tmp_path, BASE)
    in_process(config, tmp_path / "local")
    link = FreshProcessLink(config, {10: 2, 11: 0, 12: 1})
    server_run(config, link, out_dir=tmp_path / "remote")
    assert rows(tmp_path / "remote") == rows(tmp_path / "local")
    local, remote = final_weights(tmp_path / "local"), final_weights(tmp_path / "remote")
    assert all(np.array_equal(local[k], remote[k]) for k in local)


def test_masking_over_the_link_carries_each_half_between_fresh_processes(tmp_path):
    config = config_of(tmp_path, BASE + MASKING + REPRODUCIBLE)
    in_process(config, tmp_path / "local")
    link = FreshProcessLink(config, {0: 0, 1: 1, 2: 2})
    server_run(config, link, out_dir=tmp_path / "remote")
    assert link.kinds[:5] == ["hello", "stage", "stage", "fit", "stage"]  # advertise, share, fit, unmask
    assert rows(tmp_path / "remote") == rows(tmp_path / "local")
    local, remote = final_weights(tmp_path / "local"), final_weights(tmp_path / "remote")
    assert all(np.array_equal(local[k], remote[k]) for k in local)  # the same secret streams: bitwise


def test_signed_masking_over_the_link_checks_consistency_and_equals_the_unsigned_run(tmp_path):
    from secure_ffm.secagg.signing import write_signing_keys

    write_signing_keys(tmp_path / "keys", 3)
    unsigned = config_of(tmp_path, BASE + MASKING + REPRODUCIBLE)
    signed = config_of(
        tmp_path, BASE + MASKING + f'signatures = true\npeer_keys = "{tmp_path / "keys" / "peer_keys.json"}"\n' + REPRODUCIBLE, "s.toml"
    )
    in_process(unsigned, tmp_path / "local")
    keys = {node: str(tmp_path / "keys" / f"client-{node}.key") for node in range(3)}
    link = FreshProcessLink(signed, {0: 0, 1: 1, 2: 2}, signing_keys=keys)
    server_run(signed, link, out_dir=tmp_path / "remote")
    assert link.kinds[:6] == ["hello", "stage", "stage", "fit", "stage", "stage"]  # advertise, share, fit, consistency, unmask
    assert rows(tmp_path / "remote") == rows(tmp_path / "local")
    # a node that holds another client's key, or none, refuses the run by name
    swapped = FreshProcessLink(signed, {0: 0, 1: 1, 2: 2}, signing_keys={**keys, 2: keys[1]})
    with pytest.raises(DeploymentError, match="node 2: .*signing-key: this node's signing key is not the one the key directory lists"):
        server_run(signed, swapped, out_dir=tmp_path / "swapped")


def test_a_node_refuses_a_round_older_than_one_it_began(tmp_path):
    # the node keeps one round's protocol half: going back to round 1 after round 2 gave a fresh half for round 1,
    # with fresh masks and signatures and a second masked input of that round (review of 2026-12-07)
    from secure_ffm.engine.aggregation import AggregationError
    from secure_ffm.run.deployment import node_session
    from secure_ffm.secagg.masking_protocol import ADVERTISE_KEYS, KeyRequest
    from secure_ffm.transports.remote import STAGE

    config = config_of(tmp_path, BASE + MASKING)
    state = {}
    session = node_session(config, partition_id=0, num_partitions=3, state=state)

    def advertise(round):
        return session.answer(STAGE, {"round": round, "stage": ADVERTISE_KEYS, "request": KeyRequest(round, (0, 1, 2))})

    advertise(2)
    with pytest.raises(AggregationError, match="already began round 2 and refuses a request for round 1"):
        advertise(1)
    again = node_session(config, partition_id=0, num_partitions=3, state=state)  # a fresh process, the same node state
    with pytest.raises(AggregationError, match="already began round 2"):
        again.answer(STAGE, {"round": 1, "stage": ADVERTISE_KEYS, "request": KeyRequest(1, (0, 1, 2))})
    with pytest.raises(AggregationError, match="already advertised its keys"):
        advertise(2)


def test_a_node_gone_after_its_masked_input_is_recovered_by_the_survivors(tmp_path):
    config = config_of(tmp_path, BASE.replace("num_clients = 3", "num_clients = 4") + MASKING + "threshold = 3\n")
    fits = []

    def gone(kind, node):
        if kind == "fit":
            fits.append(node)
        return node == 3 and kind == "stage" and len(fits) >= 4  # node 3 sent its masked input, then vanished

    link = FreshProcessLink(config, {0: 0, 1: 1, 2: 2, 3: 3}, gone=gone)
    summary = server_run(config, link, out_dir=tmp_path / "remote")
    history = rows(tmp_path / "remote")
    assert history[0]["aborted"] is None and history[0]["clients"] == [0, 1, 2, 3]
    assert summary["final"]["test_accuracy"] is not None and np.isfinite(summary["final"]["test_loss"])


def test_a_node_gone_before_its_masked_input_has_its_masks_removed_with_the_request_the_others_trained_on(tmp_path):
    # the survivors bound their pairwise masks to the digest of the fit request as they unpacked it, the server removes
    # the gone node's masks with the digest of the request it packed: if the two differed the sum would be noise
    def gone(kind, node):
        return node == 2 and kind == "fit"

    runs = {}
    for name, text in (("masked", BASE + MASKING + REPRODUCIBLE), ("plain", BASE + REPRODUCIBLE)):
        config = config_of(tmp_path, text, name=f"{name}.toml")
        server_run(config, FreshProcessLink(config, {0: 0, 1: 1, 2: 2}, gone=gone), out_dir=tmp_path / name)
        runs[name] = final_weights(tmp_path / name)
        assert [(row["clients"], row["aborted"]) for row in rows(tmp_path / name)] == [([0, 1], None)] * 2
    for k, plain in runs["plain"].items():  # the masked sum of the survivors is theirs, to the quantization
        np.testing.assert_allclose(runs["masked"][k], plain, atol=1e-3, err_msg=k)


def test_a_round_after_a_node_is_gone_aborts_when_the_survivors_refuse_a_smaller_mask_graph(tmp_path):
    """Round 1: node 2 sends its masked input and is never heard from again; the survivors (t = 2) unmask the sum of
    all three. Round 2: the two left refuse a mask graph smaller than their configuration plans, so the round aborts
    (``on_abort = "skip"``) and the model stays as round 1 left it (the loopback federation test kills a real
    SuperNode for round 1)."""
    config = config_of(tmp_path, BASE + MASKING + "threshold = 2\n")
    fits = []

    def gone(kind, node):
        if kind == "fit":
            fits.append(node)
        return node == 2 and len(fits) >= 3 and not (kind == "fit" and len(fits) == 3)

    link = FreshProcessLink(config, {0: 0, 1: 1, 2: 2}, gone=gone)
    server_run(config, link, out_dir=tmp_path / "remote")
    history = rows(tmp_path / "remote")
    assert history[0]["aborted"] is None and history[0]["clients"] == [0, 1, 2]  # node 2's input counted
    assert history[1]["aborted"] is not None and history[1]["clients"] == []
    assert history[1]["test_accuracy"] == history[0]["test_accuracy"]


class UnmaskAskingLink(FreshProcessLink):
    """Records, for each unmasking stage (or ``stage``), the nodes whose reply the server waited for (a node answers
    when asked)."""

    def __init__(self, config, partitions, *, silent, stage="unmask", **options):
        super().__init__(config, partitions, gone=lambda kind, node: node == silent and self.unmasking, **options)
        self.stage = stage
        self.unmasking = False
        self.asked: list[list[int]] = []

    def request(self, kind, bodies):
        self.unmasking = kind == "stage" and unpack(*next(iter(bodies.values())))["stage"] == self.stage
        if self.unmasking:
            self.asked.append([])
        for node in bodies:  # one node at a time, as replies arrive
            if self.unmasking:
                self.asked[-1].append(node)
            yield from super().request(kind, {node: bodies[node]})


def test_the_unmasking_stage_does_not_wait_for_a_survivor_once_the_others_shares_suffice(tmp_path):
    """Node 2 never answers the unmasking stage (it died after sending its masked input, or is slow): the shares of
    nodes 0 and 1 (t = 2) rebuild every secret, so the server goes on without asking for node 2's reply, where it
    used to wait out its stage timeout; the model is the in-process run's, bitwise."""
    config = config_of(tmp_path, BASE + MASKING + REPRODUCIBLE)
    in_process(config, tmp_path / "local")
    link = UnmaskAskingLink(config, {0: 0, 1: 1, 2: 2}, silent=2)
    server_run(config, link, out_dir=tmp_path / "remote")
    assert link.asked == [[0, 1], [0, 1]]  # one unmasking stage a round; node 2's reply was never waited for
    assert [r["clients"] for r in rows(tmp_path / "remote")] == [[0, 1, 2], [0, 1, 2]]
    local, remote = final_weights(tmp_path / "local"), final_weights(tmp_path / "remote")
    assert all(np.array_equal(local[k], remote[k]) for k in local)


def test_the_consistency_check_does_not_wait_for_a_survivor_once_the_others_signatures_suffice(tmp_path):
    """Node 2 never answers the consistency check (signatures): nodes 0 and 1 are a quorum (a majority of 3, t = 2) and
    hold t shares of every secret, so the server goes on without waiting for node 2 (and does not ask it to unmask)."""
    from secure_ffm.secagg.signing import write_signing_keys

    write_signing_keys(tmp_path / "keys", 3)
    signed = BASE + MASKING + f'threshold = 2\nsignatures = true\npeer_keys = "{tmp_path / "keys" / "peer_keys.json"}"\n'
    config = config_of(tmp_path, signed + REPRODUCIBLE)
    keys = {node: str(tmp_path / "keys" / f"client-{node}.key") for node in range(3)}
    link = UnmaskAskingLink(config, {0: 0, 1: 1, 2: 2}, silent=2, stage="consistency_check", signing_keys=keys)
    server_run(config, link, out_dir=tmp_path / "remote")
    assert link.asked == [[0, 1], [0, 1]]  # one consistency check a round; node 2's reply was never waited for
    assert [r["clients"] for r in rows(tmp_path / "remote")] == [[0, 1, 2], [0, 1, 2]]  # its input is in the sum


def test_a_node_of_another_configuration_is_refused_by_name(tmp_path):
    config = config_of(tmp_path, BASE)
    other = config_of(tmp_path, BASE.replace("local_steps = 2", "local_steps = 3"), "other.toml")

    link = FreshProcessLink(config, {0: 0, 1: 1, 2: 2}, configs={2: other})
    with pytest.raises(DeploymentError, match=r"node 2: it runs another configuration"):
        server_run(config, link, out_dir=tmp_path / "remote")
    assert not (tmp_path / "remote").exists()


def test_a_node_with_a_partition_out_of_range_is_refused(tmp_path):
    config = config_of(tmp_path, BASE)
    link = FreshProcessLink(config, {0: 0, 1: 1, 2: 7})
    with pytest.raises(DeploymentError, match=r"node 2 answered with an error: ConfigError: partition-id: 7 is outside 0..2"):
        server_run(config, link, out_dir=tmp_path / "remote")


@pytest.mark.parametrize(
    "count", [float("inf"), -5, 1.5, "40", True, 10**400], ids=["inf", "negative", "fraction", "text", "bool", "beyond-float64"]
)
def test_a_hello_with_an_example_count_that_is_no_count_is_refused_by_name(tmp_path, count):
    """``int(inf)`` raised OverflowError past the hello's checks, and a negative count made a round's weight bound negative."""
    config = config_of(tmp_path, BASE)
    with pytest.raises(DeploymentError, match=r"node 2: its hello gives num_examples = .*, not a non-negative integer"):
        change = rewritten(lambda hello: {**hello, "num_examples": count})
        link = TamperingLink(config, {0: 0, 1: 1, 2: 2}, victim=2, kind=HELLO, tamper=change)
        server_run(config, link, out_dir=tmp_path / "remote")
    assert not (tmp_path / "remote").exists()


def test_simulated_dropouts_are_refused_on_a_deployment(tmp_path):
    config = config_of(tmp_path, BASE + MASKING + "dropout_rate = 0.3\n")
    with pytest.raises(ConfigError, match="secure_aggregation.dropout_rate"):
        server_run(config, FreshProcessLink(config, {0: 0}), out_dir=tmp_path / "remote")


DP_SGD = '[privacy]\nmode = "dp-sgd"\ntarget_epsilon = 8.0\nreproducible_noise = true\n'


def test_dp_sgd_over_the_link_keeps_each_ledger_on_its_node_and_privacy_json_gathers_them(tmp_path):
    config = config_of(tmp_path, BASE + DP_SGD)
    in_process(config, tmp_path / "local")
    link = FreshProcessLink(config, {0: 0, 1: 1, 2: 2})
    server_run(config, link, out_dir=tmp_path / "remote")
    assert rows(tmp_path / "remote") == rows(tmp_path / "local")  # epsilon columns included
    local, remote = final_weights(tmp_path / "local"), final_weights(tmp_path / "remote")
    assert all(np.array_equal(local[k], remote[k]) for k in local)
    ledger = json.loads((tmp_path / "remote" / "privacy.json").read_text())
    assert ledger == json.loads((tmp_path / "local" / "privacy.json").read_text())
    assert all(0 < c["epsilon"] <= 8.0 for c in ledger["clients"])
    # the server holds the ledgers the nodes reported and no client's secret
    newest = sorted((tmp_path / "remote" / "checkpoints").iterdir())[-1]
    held = json.loads((newest / "state.json").read_text())["client_states"]
    assert all(set(state) == {"dp_sgd"} for state in held.values())
    assert all("dp_sgd" in from_bytes(saved)["client"] for saved in link.saved.values())  # each node keeps its own ledger


@pytest.mark.parametrize(
    "damage",
    [
        lambda ledger, token: ({**ledger, "epsilon": "tiny"}, token),
        lambda ledger, token: ({**ledger, "steps": -3}, token),
        lambda ledger, token: ({**ledger, "ledger": {"format": "nonsense"}}, token),
        lambda ledger, token: (ledger, "x" * 10_000),
        lambda ledger, token: ({**ledger, "epsilon": 10**400}, token),
    ],
    ids=["text-epsilon", "negative-steps", "not-a-ledger", "huge-token", "integer-beyond-float64"],
)
def test_a_node_reporting_a_malformed_ledger_does_not_end_the_run(tmp_path, damage, caplog):
    """A node's ledger report is input: it used to end the server's run where the round's metrics first read it."""
    config = config_of(tmp_path, BASE + DP_SGD)
    with caplog.at_level("WARNING", logger="secure_ffm.run.deployment"):
        ledger, token = "ledger", "incarnation"
        change = rewritten(lambda answer: {**answer, **dict(zip((ledger, token), damage(answer[ledger], answer[token]), strict=True))})
        server_run(config, TamperingLink(config, {0: 0, 1: 1, 2: 2}, victim=1, kind=FIT, tamper=change), out_dir=tmp_path / "remote")
    assert "cannot use" in caplog.text
    clients = json.loads((tmp_path / "remote" / "privacy.json").read_text())["clients"]
    assert clients[1]["rounds"] == 0 and all(c["rounds"] == 2 for k, c in enumerate(clients) if k != 1)


@pytest.mark.parametrize("value", ["a while", 10**400], ids=["text", "integer-beyond-float64"])
def test_a_node_sending_a_metric_that_is_no_number_is_left_out_and_the_run_goes_on(tmp_path, value):
    """The server adds the clients' train_seconds up: a text there used to end its run with TypeError, an integer beyond
    float64 (JSON's integers have any size) with OverflowError."""
    config = config_of(tmp_path, BASE)

    def text_metric(answer):
        return {
            **answer,
            "message": dataclasses.replace(answer["message"], metrics={**answer["message"].metrics, "train_seconds": value}),
        }

    link = TamperingLink(config, {0: 0, 1: 1, 2: 2}, victim=1, kind=FIT, tamper=rewritten(text_metric))
    server_run(config, link, out_dir=tmp_path / "remote")
    assert [r["clients"] for r in rows(tmp_path / "remote")] == [[0, 2], [0, 2]]


@pytest.mark.parametrize("count", [10**400, -3], ids=["beyond-float64", "negative"])
def test_a_node_whose_message_claims_no_count_of_examples_is_left_out_and_the_run_goes_on(tmp_path, count):
    """The round's row weighs the clients' losses by their messages' counts in float64: 10**400 ended the run (OverflowError)."""
    config = config_of(tmp_path, BASE)

    def claim(answer):
        return {**answer, "message": dataclasses.replace(answer["message"], num_examples=count)}

    link = TamperingLink(config, {0: 0, 1: 1, 2: 2}, victim=1, kind=FIT, tamper=rewritten(claim))
    server_run(config, link, out_dir=tmp_path / "remote")
    assert [r["clients"] for r in rows(tmp_path / "remote")] == [[0, 2], [0, 2]]


def test_a_nodes_reason_for_declining_is_kept_short(tmp_path):
    config = config_of(tmp_path, BASE.replace("rounds = 2", "rounds = 1"))
    link = TamperingLink(config, {0: 0, 1: 1, 2: 2}, victim=1, kind=FIT, tamper=rewritten(lambda answer: {"declined": "x" * 100_000}))
    server_run(config, link, out_dir=tmp_path / "remote")
    row = rows(tmp_path / "remote")[0]
    assert row["skipped_clients"] == [1] and len(row["skipped_reasons"]["1"]) == 500


EVALUATE_CLIENTS = BASE.replace("rounds = 2", "rounds = 1\nevaluate_clients = true")


@pytest.mark.parametrize(
    ("answer", "kept"),
    [
        ({"loss": 0.5, "accuracy": 0.75, "macro_f1": None, "num_examples": 40.0}, True),  # no macro F1 (e.g. MLM): kept
        ({"loss": 0.5, "accuracy": "high"}, False),
        ({"loss": 0.5}, False),
        (["loss", 0.5], False),
        ({"loss": 10**400, "accuracy": 0.5}, False),  # JSON integers have any size: float() raised OverflowError
    ],
    ids=["none-allowed", "text", "no-accuracy", "not-a-table", "integer-beyond-float64"],
)
def test_a_nodes_evaluation_is_recorded_only_when_the_server_can_read_it(tmp_path, answer, kept):
    """``float()`` of each value ended the run on a text, and on the None an objective without macro F1 gives; a node
    that did not evaluate then ended it again in clients.json."""
    config = config_of(tmp_path, EVALUATE_CLIENTS)
    link = TamperingLink(config, {0: 0, 1: 1, 2: 2}, victim=1, kind=EVALUATE, tamper=rewritten(lambda _: answer))
    server_run(config, link, out_dir=tmp_path / "remote")
    clients = json.loads((tmp_path / "remote" / "clients.json").read_text())["clients"]
    assert ("final_eval" in clients[1]) is kept
    assert all(0.0 <= clients[k]["final_eval"]["accuracy"] <= 1.0 for k in (0, 2))


def test_distributed_dp_sgd_under_masking_over_the_link_equals_in_process(tmp_path):
    privacy = '[privacy]\nmode = "distributed-dp-sgd"\ntarget_epsilon = 8.0\nreproducible_noise = true\n'
    config = config_of(tmp_path, BASE.replace("rounds = 2", "rounds = 2\nclients_per_round = 3") + MASKING + privacy)
    in_process(config, tmp_path / "local")
    server_run(config, FreshProcessLink(config, {0: 0, 1: 1, 2: 2}), out_dir=tmp_path / "remote")
    assert rows(tmp_path / "remote") == rows(tmp_path / "local")
    local, remote = final_weights(tmp_path / "local"), final_weights(tmp_path / "remote")
    assert all(np.array_equal(local[k], remote[k]) for k in local)


def test_each_clients_secret_stays_on_its_node(tmp_path):
    config = config_of(
        tmp_path, BASE.replace("rounds = 2", "rounds = 1") + DP_SGD.replace("reproducible_noise = true", "reproducible_noise = false")
    )
    link = FreshProcessLink(config, {0: 0, 1: 1, 2: 2})
    server_run(config, link, out_dir=tmp_path / "remote")
    held = json.loads((tmp_path / "remote" / "checkpoints" / "round_0001" / "state.json").read_text())["client_states"]
    assert held and all("noise_secret" not in state for state in held.values())
    secrets = [from_bytes(saved)["client"]["noise_secret"] for saved in link.saved.values()]
    assert len(set(secrets)) == 3  # drawn on each node, from the OS


class TamperingLink(FreshProcessLink):
    """Changes what node ``victim`` sends in reply to ``kind``: ``tamper(packed) -> packed``."""

    def __init__(self, config, partitions, *, victim, kind, tamper):
        super().__init__(config, partitions)
        self.victim, self.kind, self.tamper = victim, kind, tamper

    def request(self, kind, bodies):
        for reply in super().request(kind, bodies):
            if reply.node == self.victim and kind == self.kind and reply.packed is not None:
                reply = LinkReply(reply.node, self.tamper(reply.packed))
            yield reply


def flip_masked_input(packed):
    text, arrays = packed
    arrays = dict(arrays)
    name = max(arrays, key=lambda k: arrays[k].size)  # the masked vector
    arrays[name] = arrays[name][:-1]  # one element short
    return text, arrays


def test_a_tampered_masked_input_is_rejected_naming_the_client_and_the_others_aggregate(tmp_path, caplog):
    config = config_of(tmp_path, BASE.replace("rounds = 2", "rounds = 1") + MASKING)
    link = TamperingLink(config, {0: 0, 1: 1, 2: 2}, victim=1, kind="fit", tamper=flip_masked_input)
    with caplog.at_level("WARNING"):
        server_run(config, link, out_dir=tmp_path / "remote")
    row = rows(tmp_path / "remote")[0]
    assert row["rejected_clients"] == [1] and row["clients"] == [0, 2] and row["aborted"] is None
    assert any("client 1" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize(
    "text", ['{"$c": "os.system", "f": {}}', "[" * 100_000 + "]" * 100_000], ids=["unregistered-record", "nested-too-deeply"]
)
def test_a_reply_that_does_not_decode_drops_the_node_by_name(tmp_path, caplog, text):
    """A deeply nested reply raised RecursionError past the server's checks and ended its run."""
    config = config_of(tmp_path, BASE.replace("rounds = 2", "rounds = 1"))
    link = TamperingLink(config, {0: 0, 1: 1, 2: 2}, victim=2, kind="fit", tamper=lambda packed: (text, {}))
    with caplog.at_level("WARNING"):
        server_run(config, link, out_dir=tmp_path / "remote")
    row = rows(tmp_path / "remote")[0]
    assert row["dropped_clients"] == [2] and row["clients"] == [0, 1]
    assert any("node 2 sent a reply that does not decode" in record.getMessage() for record in caplog.records)


def test_ckks_over_the_link_with_a_dealt_key_set_matches_in_process_and_the_server_holds_no_secret(tmp_path):
    from secure_ffm.secagg.ckks import CKKSParameters, deal_key_files

    config = config_of(tmp_path, BASE.replace("rounds = 2", "rounds = 1") + '[secure_aggregation]\nprotocol = "ckks"\n')
    files = deal_key_files(CKKSParameters.from_config(config.secure_aggregation))
    server_keys, client_keys = files["server"], files["clients"]
    in_process(config, tmp_path / "local")
    server_run(
        config, FreshProcessLink(config, {0: 0, 1: 1, 2: 2}, key_file=client_keys), out_dir=tmp_path / "remote", key_file=server_keys
    )
    local, remote = final_weights(tmp_path / "local"), final_weights(tmp_path / "remote")
    for key in local:  # CKKS is approximate: within its noise, not bitwise
        np.testing.assert_allclose(remote[key], local[key], atol=1e-6)
    assert [r["clients"] for r in rows(tmp_path / "remote")] == [[0, 1, 2]]


def test_a_ckks_deployment_refuses_missing_or_swapped_key_files(tmp_path):
    from secure_ffm.secagg.ckks import CKKSParameters, deal_key_files

    config = config_of(tmp_path, BASE + '[secure_aggregation]\nprotocol = "ckks"\n')
    files = deal_key_files(CKKSParameters.from_config(config.secure_aggregation))
    server_keys, client_keys = files["server"], files["clients"]
    link = FreshProcessLink(config, {0: 0, 1: 1, 2: 2}, key_file=client_keys)
    with pytest.raises(ConfigError, match="ckks-keys: ckks on a deployment needs its key set"):
        server_run(config, link, out_dir=tmp_path / "a")
    with pytest.raises(ConfigError, match="the key file is the clients file"):
        server_run(config, link, out_dir=tmp_path / "b", key_file=client_keys)  # the secret key must never reach the server
    swapped = FreshProcessLink(config, {0: 0, 1: 1, 2: 2}, key_file=server_keys)
    with pytest.raises(DeploymentError, match="node 0 answered with an error: ConfigError: ckks-keys: the key file is the server file"):
        server_run(config, swapped, out_dir=tmp_path / "c", key_file=server_keys)


@pytest.mark.parametrize("method", ["replay", "ewc"])
def test_a_continual_run_over_the_link_follows_the_servers_stage_and_equals_in_process(tmp_path, method):
    # the nodes learn the stage from the round alone; replay's buffer and EWC's importances stay client-side state
    body = BASE.replace("[server]\nrounds = 2\n", "") + MASKING + DP_SGD  # DP_SGD: reproducible noise, for bitwise
    config = config_of(tmp_path, body + two_stage_continual(method))
    local = in_process(config, tmp_path / "local")
    link = FreshProcessLink(config, {0: 0, 1: 1, 2: 2})
    remote = server_run(config, link, out_dir=tmp_path / "remote")
    history = rows(tmp_path / "remote")
    assert [r["stage"] for r in history] == ["zeros and ones", "twos and threes"]
    assert history == rows(tmp_path / "local")
    assert remote["continual"]["accuracy_matrix"] == local["continual"]["accuracy_matrix"]
    weights_local, weights_remote = final_weights(tmp_path / "local"), final_weights(tmp_path / "remote")
    assert all(np.array_equal(weights_local[k], weights_remote[k]) for k in weights_local)


def test_a_continual_run_on_nodes_holding_their_own_data_is_refused_naming_continual(tmp_path):
    from secure_ffm.run.deployment import check_node_data

    config = config_of(tmp_path, BASE.replace("[server]\nrounds = 2\n", "") + two_stage_continual("naive"))
    with pytest.raises(ConfigError, match="continual: a continual run's stages split the partitions"):
        check_node_data(config)


AUTHORITY_CKKS = '[secure_aggregation]\nprotocol = "ckks"\nckks_key_holder = "authority"\n'


def authority_keys(config):
    from secure_ffm.secagg.ckks import CKKSParameters, deal_key_files

    return deal_key_files(CKKSParameters.from_config(config.secure_aggregation), key_holder="authority")


def test_a_key_authority_node_decrypts_only_aggregates_and_the_run_matches_in_process(tmp_path):
    from secure_ffm.secagg.ckks import EncryptedAggregate

    config = config_of(tmp_path, BASE + AUTHORITY_CKKS)
    files = authority_keys(config)
    in_process(config, tmp_path / "local")
    link = FreshProcessLink(config, {0: 0, 1: 1, 2: 2}, key_file=files["clients"], authority=(9, files["authority"]))
    server_run(config, link, out_dir=tmp_path / "remote", key_file=files["server"])
    local, remote = final_weights(tmp_path / "local"), final_weights(tmp_path / "remote")
    for key in local:  # CKKS is approximate: within its noise, not bitwise
        np.testing.assert_allclose(remote[key], local[key], atol=1e-6)
    assert [r["clients"] for r in rows(tmp_path / "remote")] == [[0, 1, 2], [0, 1, 2]]
    # the authority got the hello and one request a round: the encrypted sum of all three clients, never one client's
    decrypts = [request["request"] for kind, request in link.authority_requests if kind == "stage"]
    assert [kind for kind, _ in link.authority_requests] == ["hello", "stage", "stage"]
    assert all(isinstance(a, EncryptedAggregate) and a.num_clients == 3 for a in decrypts)


def test_the_clients_key_file_under_an_authority_holds_no_secret_key(tmp_path):
    import tenseal as ts

    from secure_ffm.engine.codec import from_bytes

    files = authority_keys(config_of(tmp_path, BASE + AUTHORITY_CKKS))
    clients, authority = from_bytes(files["clients"]), from_bytes(files["authority"])
    assert not ts.context_from(clients.client_context).is_private() and ts.context_from(authority.authority_context).is_private()
    assert clients.public_context == authority.public_context and not from_bytes(files["server"]).authority_context


def test_a_deployment_without_its_key_authority_stops_before_the_first_round(tmp_path):
    config = config_of(tmp_path, BASE + AUTHORITY_CKKS)
    files = authority_keys(config)
    link = FreshProcessLink(config, {0: 0, 1: 1, 2: 2}, key_file=files["clients"])
    with pytest.raises(DeploymentError, match="no key authority answered the hello"):
        server_run(config, link, out_dir=tmp_path / "remote", key_file=files["server"])
    assert not (tmp_path / "remote" / "metrics.jsonl").exists()


def test_the_authoritys_secret_key_is_refused_by_the_server_and_a_clients_mode_key_set_by_the_authority(tmp_path):
    from secure_ffm.run.deployment import authority_session

    config = config_of(tmp_path, BASE + AUTHORITY_CKKS)
    files = authority_keys(config)
    link = FreshProcessLink(config, {0: 0, 1: 1, 2: 2}, key_file=files["clients"], authority=(9, files["authority"]))
    with pytest.raises(ConfigError, match="the key file is the authority file"):
        server_run(config, link, out_dir=tmp_path / "a", key_file=files["authority"])
    from secure_ffm.secagg.ckks import CKKSParameters, deal_key_files

    shared = deal_key_files(CKKSParameters.from_config(config.secure_aggregation))  # a key_holder = "clients" set
    with pytest.raises(ConfigError, match="secure_aggregation.ckks_key_holder: is 'authority', but the key file was dealt for"):
        authority_session(config, key_file=shared["clients"])
    plain = config_of(tmp_path, BASE + '[secure_aggregation]\nprotocol = "ckks"\n', "plain.toml")
    with pytest.raises(ConfigError, match="role: this SuperNode was started as the key authority, but the run has none"):
        authority_session(plain, key_file=shared["clients"])
