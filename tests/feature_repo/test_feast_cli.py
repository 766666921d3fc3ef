"""`feast apply` and `feast materialize` work on feature_repo/ as it is checked in."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from feast import FeatureStore

from feature_repo import names as n
from pipelines.build_features import write_tables
from tests.synthetic import make_shop

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2] / "feature_repo"
FEAST = str(Path(sys.executable).parent / "feast")


def test_feast_cli_apply_and_materialize_inside_the_repo(tmp_path):
    repo = tmp_path / "feature_repo"
    repo.mkdir()
    for f in [*REPO.glob("*.py"), REPO / "feature_store.yaml"]:
        shutil.copy(f, repo / f.name)
    events, items = make_shop(n_users=5, n_items=8, purchases_per_user=4)
    write_tables(events, items, repo / "data", log=lambda m: None)

    apply = subprocess.run([FEAST, "apply"], cwd=repo, capture_output=True, text=True)
    assert apply.returncode == 0, apply.stderr
    listed = subprocess.run([FEAST, "feature-views", "list"], cwd=repo, capture_output=True, text=True)
    for view in (n.USER_STATS_VIEW, n.ITEM_STATS_VIEW, "item_content"):
        assert view in listed.stdout
    services = subprocess.run([FEAST, "feature-services", "list"], cwd=repo, capture_output=True, text=True)
    assert n.RETRIEVAL_QUERY_SERVICE in services.stdout and n.RETRIEVAL_CANDIDATE_SERVICE in services.stdout

    mat = subprocess.run([FEAST, "materialize", "2010-12-01T00:00:00", "2011-06-01T00:00:00"],
                         cwd=repo, capture_output=True, text=True)
    assert mat.returncode == 0, mat.stderr
    online = FeatureStore(repo_path=str(repo)).get_online_features(
        features=[f"{n.USER_STATS_VIEW}:{n.USER_PURCHASE_COUNT}"], entity_rows=[{n.USER_ID: "U000"}]).to_dict()
    assert online[n.USER_PURCHASE_COUNT] == [4]  # all 4 purchases of U000 are before June
