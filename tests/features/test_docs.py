"""The documentation derives from the contract table: keep them in sync."""

from pathlib import Path

from poke_rl.schema import OBSERVATION_FIELDS, REASONS, fields_markdown

DOC = Path(__file__).resolve().parents[2] / "docs" / "TRAJECTORY.md"


def test_trajectory_doc_holds_the_generated_field_table():
    text = DOC.read_text()
    assert fields_markdown() in text, "regenerate with: python -m poke_rl.schema"


def test_field_table_lists_every_field_once():
    rows = [line for line in fields_markdown().splitlines()[2:]]
    assert [row.split("|")[1].strip() for row in rows] == [f.name for f in OBSERVATION_FIELDS]


def test_trajectory_doc_names_every_rejection_reason():
    text = DOC.read_text()
    for code, meaning in REASONS.items():
        assert f"| {code} | {meaning} |" in text
