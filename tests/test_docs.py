"""docs/isa.md ends with the field tables generated from sparrow.isa; they must not drift."""

from pathlib import Path

from sparrow.isa import field_table_markdown

DOC = Path(__file__).resolve().parents[1] / "docs" / "isa.md"
MARKER = "<!-- generated: python -m sparrow.isa -->"


def test_isa_field_tables_are_generated():
    text = DOC.read_text()
    assert text.count(MARKER) == 1, "docs/isa.md must contain the generated-tables marker once"
    generated = text.split(MARKER, 1)[1]
    assert generated.strip() == field_table_markdown().strip(), (
        "docs/isa.md field tables are stale: regenerate with `python -m sparrow.isa`")


def test_tables_mention_every_field():
    from sparrow.isa import KINDS
    table = field_table_markdown()
    for m, kind in KINDS.items():
        assert f"### `{m}`" in table
        for f in kind.body:
            assert f"`{f.name}`" in table
