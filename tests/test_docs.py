"""The README documents what the code has (one source of truth, checked)."""

from pathlib import Path

from agents.run_dir import METRIC_COLUMNS

README = (Path(__file__).parent.parent / "README.md").read_text()


def test_readme_documents_every_metric_column():
    for column, meaning in METRIC_COLUMNS.items():
        assert f"| `{column}` | {meaning} |" in README, column
