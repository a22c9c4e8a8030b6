import zipfile

import yaml

from export.variants import derive_archive
from export.verify import verify_archive
from tskit.testing import unpack_archive
from handlers.integrity import check_integrity


def test_derived_archive_changes_config_and_stays_verifiable(default_mar, tmp_path):
    out = derive_archive(default_mar, tmp_path / "v.mar", frontend={"batchSize": 3, "maxWorkers": 1},
                         handler={"precision": "fp32"})
    with zipfile.ZipFile(out) as zf:
        config = yaml.safe_load(zf.read("model-config.yaml"))
    assert config["batchSize"] == 3 and config["maxWorkers"] == 1 and config["handler"]["precision"] == "fp32"
    assert config["handler"]["crop"] == 224
    check_integrity(unpack_archive(out, tmp_path / "u"))  # hashes still match
    assert verify_archive(out).passed


def test_derived_archive_can_carry_another_version(default_mar, tmp_path):
    from tskit.rollout import archive_identity

    out = derive_archive(default_mar, tmp_path / "v2.mar", version="2.0")
    assert archive_identity(out) == (archive_identity(default_mar)[0], "2.0")
    with zipfile.ZipFile(out) as zf:
        assert '"version": "2.0"' in zf.read("tskit-manifest.json").decode()
    check_integrity(unpack_archive(out, tmp_path / "u"))
