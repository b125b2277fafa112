"""Where the tests find the published reference samples: $IWSM_MD_REFERENCE, else
../shared/data/reference beside the repository (as on the developers' machines and in CI)."""
import os
from pathlib import Path

REFERENCE = Path(os.environ.get("IWSM_MD_REFERENCE", Path(__file__).resolve().parents[2] / "shared" / "data" / "reference"))
