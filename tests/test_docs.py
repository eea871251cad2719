"""The docs document what the code has (one source of truth, checked)."""

from pathlib import Path

from agents.run_dir import METRIC_COLUMNS

DOCS = Path(__file__).parent.parent / "docs"


def test_the_metrics_page_documents_every_metric_column():
    page = (DOCS / "metrics.md").read_text()
    rows = [line for line in page.splitlines() if line.startswith("| `")]
    assert rows == [f"| `{column}` | {meaning} |" for column, meaning in METRIC_COLUMNS.items()]
