"""`tskit serve` and `tskit stop` (what `make serve` and `make stop` run) with the shipped config copied into a
project folder and started from another directory: relative paths resolve against the config's folder; with
`--key --require-signed`, an unsigned, tampered or re-sealed archive in the model store stops it before
TorchServe starts."""
import hashlib
import json
import shutil
import subprocess
import sys
import zipfile

from export.zoo import DEFAULT_NAME, SAMPLE_TOP1
from tests.e2e.conftest import REPO
from tskit.client import TorchServeClient
from tskit.properties import read_properties, write_properties
from tskit.server import PORT_KEYS, free_port

TSKIT = [sys.executable, "-m", "tskit.cli"]


def resealed_copy(mar, dest, member="handlers/payload.py"):
    """`mar` with `member` edited and its hash in the manifest updated to match: sealed again, signature kept."""
    with zipfile.ZipFile(mar) as src, zipfile.ZipFile(dest, "w") as out:
        edited = src.read(member) + b"\nimport os  # not what was signed\n"
        manifest = json.loads(src.read("tskit-manifest.json"))
        manifest["files"][member] = hashlib.sha256(edited).hexdigest()
        for item in src.infolist():
            data = {member: edited, "tskit-manifest.json": json.dumps(manifest).encode()}.get(item.filename)
            out.writestr(item, data if data is not None else src.read(item.filename))


def refused_before_start(cwd, config, *flags) -> subprocess.CompletedProcess:
    result = subprocess.run(TSKIT + ["serve", "--config", config, "--timeout", "60", *flags], capture_output=True,
                            text=True, cwd=cwd, timeout=120)
    print(result.stdout + result.stderr)
    assert result.returncode == 1 and "not starting TorchServe" in result.stderr, result.stdout + result.stderr
    assert not (cwd / "key_file.json").exists() and not (cwd / "logs").exists()  # TorchServe never started
    return result


def test_serve_from_another_directory_then_stop(e2e_store, photo_bytes, tmp_path):
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    (project / "config").mkdir(parents=True)
    elsewhere.mkdir()
    shutil.copy(REPO / "config" / "metrics.yaml", project / "config" / "metrics.yaml")
    shutil.copytree(e2e_store, project / "model_store")
    props = read_properties(REPO / "config.properties")
    assert props["model_store"] == "model_store" and props["metrics_config"] == "config/metrics.yaml"  # relative
    props.update({key: fmt.format(free_port()) for key, fmt in PORT_KEYS.items()})
    write_properties(project / "config.properties", props)
    config = "../project/config.properties"
    keys = tmp_path / "keys"
    assert subprocess.run(TSKIT + ["keygen", "--out", str(keys)], capture_output=True).returncode == 0
    private, public = keys / "tskit-signing.key.pem", keys / "tskit-signing.pub.pem"
    mar = project / "model_store" / f"{DEFAULT_NAME}.mar"
    signed = subprocess.run(TSKIT + ["sign", str(mar), "--key", str(private)], capture_output=True, text=True)
    assert signed.returncode == 0, signed.stderr
    trusted = ["--key", str(public), "--require-signed"]

    stray = project / "model_store" / "stray.mar"
    shutil.copy(e2e_store / f"{DEFAULT_NAME}.mar", stray)  # unsigned
    assert "stray.mar" in refused_before_start(elsewhere, config, *trusted).stderr
    resealed_copy(mar, stray)  # signed, but a file and its hash changed after signing
    out = refused_before_start(elsewhere, config, "--key", str(public))  # refused even when not required
    assert "stray.mar: REFUSED: the signature does not verify" in out.stdout
    stray.unlink()
    try:
        served = subprocess.run(TSKIT + ["serve", "--config", config, "--sample", "photo.png", "--timeout", "300",
                                         *trusted],
                                capture_output=True, text=True, cwd=elsewhere, timeout=400)
        assert served.returncode == 0, served.stdout + served.stderr
        assert f"{DEFAULT_NAME}.mar: signed by {public}; every file matches" in served.stdout
        assert f"{DEFAULT_NAME}: 2 worker(s) READY" in served.stdout and "curl -H" in served.stdout
        client = TorchServeClient.from_config(project / "config.properties", elsewhere)
        answer = client.predict(DEFAULT_NAME, photo_bytes["coffee.png"], timeout=60)
        assert answer.status_code == 200 and next(iter(answer.json())) in SAMPLE_TOP1["coffee.png"], answer.text
        assert (elsewhere / "key_file.json").is_file() and (elsewhere / "logs").is_dir()
    finally:
        stopped = subprocess.run(TSKIT + ["stop"], capture_output=True, text=True, cwd=elsewhere, timeout=120)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped.stdout + stopped.stderr
    assert not TorchServeClient.from_config(project / "config.properties", elsewhere).ping()
