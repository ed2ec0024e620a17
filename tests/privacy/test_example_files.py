"""Files that hold clients' training examples are readable by their owner only.

An audit's originals are the attacked client's examples, and a reconstruction that succeeds is one too: the picture
(originals above reconstructions), the reconstructed pixels, the text table and ``attack.json`` (whose per-sample rows
list the original and the recovered texts), and a sweep's ``original_pixels.npy``, ``reconstructed_pixels.npy`` and
``sweep.jsonl`` (an audited point's row holds the texts). Before 2026-12-07 each took the umask's mode (0o644 here): on a
shared machine every user could read a hospital's notes out of a sweep directory.
"""

import json

import numpy as np
import torch
from file_modes import mode  # tests/privacy/file_modes.py (on sys.path under pytest)

from attacks.audit import AuditCase, audit_config, prepare_case
from attacks.base import Budget, GroundTruth, Reconstruction
from attacks.pictures import write_text_table
from eval.results import JSONL, append_row
from secure_ffm.config import config_from_dict
from secure_ffm.run.checkpoint import save_private_array


def test_an_image_audits_picture_pixels_and_attack_json_are_owner_only(tmp_path, umask_022):
    config = config_from_dict(
        {
            "run": {"seed": 0},
            "data": {"dataset": "digits", "max_train_examples": 100, "max_test_examples": 20, "num_clients": 4, "partition": "iid"},
            "model": {"arch": "cnn", "finetune": "full"},
            "client": {"batch_size": 1, "local_steps": 1, "lr": 0.1},
            "server": {"rounds": 1},
        }
    )
    audit_config(
        config, case=AuditCase(batch_size=1), attack="dlg", budget=Budget(max_iterations=2), out_dir=tmp_path, prepared=prepare_case(config)
    )
    written = {p.name: mode(p) for p in tmp_path.iterdir()}
    assert written == {"attack.json": 0o600, "reconstructions.png": 0o600, "reconstructions.npy": 0o600}
    assert (tmp_path / "reconstructions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert np.load(tmp_path / "reconstructions.npy").shape == (1, 1, 28, 28)


def test_a_text_audits_table_is_owner_only(tmp_path, umask_022):
    truth = GroundTruth({"input_ids": torch.zeros(1, 4, dtype=torch.long)}, torch.zeros(1), texts=["the patient's private note"])
    recovered = Reconstruction(torch.zeros(1, 4, dtype=torch.long), texts=["the private note"])
    path = write_text_table(truth, recovered, [{"truth_index": 0, "token_f1": 0.8}], tmp_path / "reconstructions.md")
    assert mode(path) == 0o600
    assert "the patient's private note" in path.read_text()


def test_a_sweeps_pixels_are_owner_only(tmp_path, umask_022):
    pixels = np.random.default_rng(0).random((2, 28, 28), dtype=np.float32)
    save_private_array(tmp_path / "original_pixels.npy", pixels)
    assert mode(tmp_path / "original_pixels.npy") == 0o600
    np.testing.assert_array_equal(np.load(tmp_path / "original_pixels.npy", allow_pickle=False), pixels)
    assert [p.name for p in tmp_path.iterdir()] == ["original_pixels.npy"]  # no temporary file left


def test_sweep_jsonl_is_created_owner_only_and_an_older_open_one_is_closed(tmp_path, umask_022):
    row = {"point_id": "p", "texts": [{"original": "the patient's private note", "recovered": "private note"}]}
    append_row(tmp_path, row)
    assert mode(tmp_path / JSONL) == 0o600
    older = tmp_path / "older"
    older.mkdir()
    (older / JSONL).write_text(json.dumps({"point_id": "q"}) + "\n")  # as an earlier version left it: the umask's mode
    assert mode(older / JSONL) == 0o644
    append_row(older, row)
    assert mode(older / JSONL) == 0o600
    assert [json.loads(line)["point_id"] for line in (older / JSONL).read_text().splitlines()] == ["q", "p"]


def test_a_text_audits_table_escapes_html_and_markdown(tmp_path):
    """A recovered ``<script>`` (a tokenizer that keeps it whole) would become live HTML in a Markdown viewer."""
    truth = GroundTruth({"input_ids": torch.zeros(1, 4, dtype=torch.long)}, torch.zeros(1), texts=["<script>alert(1)</script> *x* [a](b)"])
    recovered = Reconstruction(torch.zeros(1, 4, dtype=torch.long), texts=["<script>alert(1)</script> | y"])
    text = write_text_table(truth, recovered, [{"truth_index": 0}], tmp_path / "reconstructions.md").read_text()
    assert "<script>" not in text and "&lt;script&gt;" in text
    assert "\\*x\\*" in text and "\\[a\\](b)" in text and "\\|" in text
