"""Reading config files: what is accepted (a byte-order mark) and the CKKS headroom bound checked before a run starts."""

from types import SimpleNamespace

import pytest

from secure_ffm.config import config_from_dict, load_config
from secure_ffm.data import load_federated_data
from secure_ffm.errors import ConfigError
from secure_ffm.secagg.ckks import CKKSProtocol

SMALL = {
    "data": {"dataset": "fashion_mnist", "max_train_examples": 200, "max_test_examples": 100, "num_clients": 2},
    "model": {"arch": "cnn", "finetune": "full"},
    "server": {"rounds": 2},
}


def test_a_utf8_byte_order_mark_is_accepted(tmp_path):
    plain, marked = tmp_path / "plain.toml", tmp_path / "marked.toml"
    plain.write_text('[run]\nname = "bom"\n[server]\nrounds = 2\n', encoding="utf-8")
    marked.write_text('[run]\nname = "bom"\n[server]\nrounds = 2\n', encoding="utf-8-sig")
    assert marked.read_bytes().startswith(b"\xef\xbb\xbf")
    assert load_config(marked) == load_config(plain)


def test_an_empty_config_is_refused_with_a_hint(tmp_path):
    path = tmp_path / "empty.toml"
    path.write_text("")
    with pytest.raises(ConfigError, match=r"holds no settings \(start from a shipped config, e\.g\. configs/quickstart\.toml\)"):
        load_config(path)


def ckks(bits, scale):
    return config_from_dict(
        {**SMALL, "secure_aggregation": {"protocol": "ckks", "ckks_coeff_mod_bit_sizes": bits, "ckks_scale_bits": scale}}
    )


@pytest.fixture(scope="module")
def small_data():
    config = ckks([60, 40, 40, 60], 40)
    return load_federated_data(config.data, config.run.seed)


def test_ckks_scale_without_headroom_for_the_sum_is_refused_before_the_run(small_data):
    # [60, 60] with 2^57 validated, then every client declined every round and the run exited 0 untrained
    with pytest.raises(
        ConfigError,
        match=r"secure_aggregation\.ckks_scale_bits: .* every client would decline "
        r"\(lower secure_aggregation\.ckks_scale_bits to at most 50, or add a data prime",
    ):
        CKKSProtocol.check_run(ckks([60, 60], 57), small_data)


@pytest.mark.parametrize(("bits", "scale"), [([60, 40, 40, 60], 40), ([60, 60], 40), ([60, 60], 50)])
def test_ckks_scales_with_headroom_pass(small_data, bits, scale):
    CKKSProtocol.check_run(ckks(bits, scale), small_data)


def many_examples(num_clients, examples_per_client):
    """What check_run reads of a FederatedData: the clients' index sets (a federation too large to load in a test)."""
    return SimpleNamespace(num_clients=num_clients, client_indices=[range(examples_per_client)] * num_clients)


def test_default_ckks_refuses_a_round_of_more_than_2_18_examples_before_the_run():
    # the default [60, 60] / 2^40 leaves 2^18 per slot of a sum: 20 clients x 15,000 examples (FedAvg weights) cannot fit
    config = config_from_dict({**SMALL, "secure_aggregation": {"protocol": "ckks"}})
    assert config.secure_aggregation.ckks_coeff_mod_bit_sizes == (60, 60) and config.secure_aggregation.ckks_scale_bits == 40
    with pytest.raises(
        ConfigError,
        match=r"secure_aggregation\.ckks_scale_bits: scale 2\^40 leaves 2\^18 of headroom below the data primes \[60\], "
        r"but a sum of 20 clients can reach 3e\+05 .* every client would decline .*"
        r"add a data prime to secure_aggregation\.ckks_coeff_mod_bit_sizes, e\.g\. \[60, 40, 60\]",
    ):
        CKKSProtocol.check_run(config, many_examples(20, 15_000))


@pytest.mark.parametrize(("bits", "examples_per_client"), [((60, 60), 13_107), ((60, 40, 60), 15_000)])
def test_rounds_within_the_headroom_pass(bits, examples_per_client):
    # 20 x 13,107 = 262,140 <= 2^18 at the default; a 40-bit data prime lifts the headroom to 2^58
    CKKSProtocol.check_run(ckks(list(bits), 40), many_examples(20, examples_per_client))
