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


FEATURES_DOC = DOC.parent / "FEATURES.md"


def feature_table_markdown() -> str:
    """The default feature table as Markdown: name, array, columns, encoding, sources, storage."""
    from poke_rl.features import Preprocessor

    pre = Preprocessor()
    rows = ["| feature | array | columns | encoding | sources | storage (tolerance) |",
            "|---|---|---:|---|---|---|"]
    for feature, entry in zip(pre.table, pre.describe(), strict=True):
        kinds = sorted(set(feature.column_storage()))
        storage = ", ".join(f"{kind} ({tol:g})" if kind == "half" else kind for kind, tol in kinds)
        sources = ", ".join(feature.sources) if len(feature.sources) <= 4 else (
            f"{', '.join(feature.sources[:3])}, … ({len(feature.sources)} fields)")
        rows.append(f"| {feature.name} | {entry['array']} | {entry['width']} | {feature.encoding} "
                    f"| {sources} | {storage} |")
    return "\n".join(rows)


def test_features_doc_holds_the_generated_feature_table():
    assert feature_table_markdown() in FEATURES_DOC.read_text(), (
        "regenerate with: python tests/features/test_docs.py")


if __name__ == "__main__":  # the table of docs/FEATURES.md
    print(feature_table_markdown())
