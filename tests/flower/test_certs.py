"""Test-federation certificates and SuperNode keys: what Flower's TLS and node authentication expect."""

import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from secure_ffm.flower.certs import make_certificates
from secure_ffm.flower.launch import write_node_key
from secure_ffm.run.cli import main


def test_the_server_certificate_is_signed_by_the_ca_and_names_every_host(tmp_path):
    paths = make_certificates(tmp_path, hosts=("10.0.0.5", "server.example.org"))
    ca = x509.load_pem_x509_certificate(paths.ca_certificate.read_bytes())
    server = x509.load_pem_x509_certificate(paths.server_certificate.read_bytes())
    server.verify_directly_issued_by(ca)  # raises if the signature or issuer does not match
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.5")]
    assert names.get_values_for_type(x509.DNSName) == ["server.example.org"]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert paths.server_key.stat().st_mode & 0o077 == 0 and paths.ca_key.stat().st_mode & 0o077 == 0


def test_a_node_key_is_an_openssh_ec_p384_pair(tmp_path):
    private, public = write_node_key(tmp_path, "node0")
    key = serialization.load_ssh_private_key(private.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    assert public.read_text().startswith("ecdsa-sha2-nistp384 ")
    assert serialization.load_ssh_public_key(public.read_bytes()).public_numbers() == key.public_key().public_numbers()


def test_certs_writes_the_files_and_never_overwrites(tmp_path, capsys):
    out = tmp_path / "certs"
    assert main(["certs", str(out), "--hosts", "127.0.0.1", "--nodes", "2"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "ca.key",
        "ca.pem",
        "node0",
        "node0.pub",
        "node1",
        "node1.pub",
        "server.key",
        "server.pem",
    ]
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main(["certs", str(out)]) == 2
    assert "already exists and is not empty" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_ckks_keys_writes_a_server_file_without_the_secret_key(tmp_path):
    from secure_ffm.engine.codec import from_bytes

    config = tmp_path / "c.toml"
    config.write_text('[data]\ndataset = "digits"\n[model]\narch = "cnn"\nfinetune = "full"\n[secure_aggregation]\nprotocol = "ckks"\n')
    assert main(["ckks-keys", str(config), str(tmp_path / "keys")]) == 0
    server, clients = (
        from_bytes((tmp_path / "keys" / "server.ckks").read_bytes()),
        from_bytes((tmp_path / "keys" / "clients.ckks").read_bytes()),
    )
    assert server.role == "server" and server.client_context == b"" and clients.role == "clients" and clients.client_context
    assert server.public_context == clients.public_context and server.key_id == clients.key_id
    assert (tmp_path / "keys" / "clients.ckks").stat().st_mode & 0o077 == 0


def test_ckks_keys_refuses_a_config_without_ckks(tmp_path, capsys):
    config = tmp_path / "c.toml"
    config.write_text('[data]\ndataset = "digits"\n[model]\narch = "cnn"\nfinetune = "full"\n')
    assert main(["ckks-keys", str(config), str(tmp_path / "keys")]) == 2
    assert "secure_aggregation.protocol" in capsys.readouterr().err and not (tmp_path / "keys").exists()


def test_ckks_keys_for_a_key_authority_writes_the_secret_key_to_the_authoritys_file_only(tmp_path, capsys):
    from secure_ffm.engine.codec import from_bytes

    config = tmp_path / "c.toml"
    config.write_text(
        '[data]\ndataset = "digits"\n[model]\narch = "cnn"\nfinetune = "full"\n'
        '[secure_aggregation]\nprotocol = "ckks"\nckks_key_holder = "authority"\n'
    )
    assert main(["ckks-keys", str(config), str(tmp_path / "keys")]) == 0
    files = {role: from_bytes((tmp_path / "keys" / f"{role}.ckks").read_bytes()) for role in ("server", "clients", "authority")}
    assert [f.key_holder for f in files.values()] == ["authority"] * 3
    assert files["authority"].authority_context and not files["server"].authority_context and not files["clients"].authority_context
    assert "authority.ckks (the key authority's only" in capsys.readouterr().out
    assert all((tmp_path / "keys" / f"{role}.ckks").stat().st_mode & 0o077 == 0 for role in files)


def test_a_key_authority_gets_a_supernode_of_its_own_with_the_authoritys_file_and_no_partition(tmp_path):
    from secure_ffm.flower.deploy import node_configs

    keys = {role: tmp_path / f"{role}.ckks" for role in ("server", "clients", "authority")}
    tables = node_configs(tmp_path / "c.toml", 2, keys)
    assert [t.get("partition-id") for t in tables] == [0, 1, None]
    assert [t["ckks-keys"] for t in tables] == [str(keys["clients"])] * 2 + [str(keys["authority"])]
    assert tables[2]["role"] == "authority" and all("role" not in t for t in tables[:2])
