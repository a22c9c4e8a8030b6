"""Signed archives (export/signing.py): who made an archive, checked from outside it, before it is served."""
import hashlib
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from export.signing import (SIGNATURE_NAME, SigningError, check_store, generate_key_pair, hashed_members, refusals,
                            sign_archive, signature_problems)
from handlers.integrity import MANIFEST_NAME, archive_files
from tskit.testing import load_archive_handler, run_batch, unpack_archive

SIGNING = Path(__file__).resolve().parents[2] / "export" / "signing.py"


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    ours, theirs = generate_key_pair(folder, "ours"), generate_key_pair(folder, "theirs")
    return {"private": ours[0], "public": ours[1], "other_private": theirs[0], "other_public": theirs[1]}


@pytest.fixture(scope="module")
def signed_mar(default_mar, keys, tmp_path_factory):
    mar = shutil.copy(default_mar, tmp_path_factory.mktemp("signed") / "efficientnet_lite0.mar")
    sign_archive(mar, keys["private"])
    return Path(mar)


def rewrite(mar: Path, dest: Path, edits: dict, add: dict | None = None) -> Path:
    """Copy an archive with members' bytes transformed by `edits` {name: fn(bytes) -> bytes} and `add`ed ones."""
    with zipfile.ZipFile(mar) as src, zipfile.ZipFile(dest, "w") as out:
        for item in src.infolist():
            data = src.read(item.filename)
            out.writestr(item, edits[item.filename](data) if item.filename in edits else data)
        for name, data in (add or {}).items():
            out.writestr(name, data)
    return dest


def resealed(manifest: bytes, member: str, data: bytes) -> bytes:
    """The manifest an attacker writes after editing `member`: its hash updated, the old signature kept."""
    doc = json.loads(manifest)
    doc["files"][member] = hashlib.sha256(data).hexdigest()
    return json.dumps(doc, indent=1).encode()


def test_a_signed_archive_verifies_with_its_key_and_still_serves(signed_mar, keys, photo_bytes, tmp_path):
    check = signature_problems(signed_mar, [keys["other_public"], keys["public"]])  # one trusted key suffices
    assert check.trusted and check.key == str(keys["public"]), check
    assert "every file matches" in str(check)
    # the in-archive check leaves the signature out of the hashes: the signed archive loads and answers
    handler = load_archive_handler(signed_mar, tmp_path / "unpacked")
    [(status, body)] = run_batch(handler, [{"body": photo_bytes["coffee.png"]}])
    assert status == 200 and next(iter(body)) == "espresso", body


def test_the_zip_check_and_the_in_archive_check_hash_the_same_files(signed_mar, tmp_path):
    root = unpack_archive(signed_mar, tmp_path / "u")
    with zipfile.ZipFile(signed_mar) as zf:
        assert sorted(hashed_members(zf)) == sorted(archive_files(root))
        assert SIGNATURE_NAME in zf.namelist() and MANIFEST_NAME in zf.namelist()


def test_another_key_an_unsigned_archive_and_a_missing_key_file(default_mar, signed_mar, keys, tmp_path):
    other = signature_problems(signed_mar, [keys["other_public"]])
    assert not other.trusted and "signed with another key" in str(other)
    unsigned = signature_problems(default_mar, [keys["public"]])
    assert not unsigned.signed and not unsigned.problems and str(unsigned).endswith("unsigned")
    assert refusals([unsigned], require_signed=False) == [] and refusals([unsigned], require_signed=True)
    with pytest.raises(SigningError, match="public key not found"):
        signature_problems(signed_mar, [tmp_path / "nope.pem"])
    assert "not a readable archive" in str(signature_problems(Path(__file__), [keys["public"]]))


@pytest.mark.parametrize("attack", ["edited_file", "resealed", "added_file", "swapped_handler", "dropped_file"])
def test_tampered_archives_are_refused_naming_what_changed(signed_mar, keys, tmp_path, attack):
    member = "handlers/payload.py"
    with zipfile.ZipFile(signed_mar) as zf:
        edited = zf.read(member) + b"\nprint('not what was signed')\n"
    edits, add, expect = {}, {}, ""
    if attack == "edited_file":
        edits, expect = {member: lambda _: edited}, f"{member}: sha256 differs"
    elif attack == "resealed":  # the file and its hash in the manifest both changed: only the signature catches it
        edits = {member: lambda _: edited, MANIFEST_NAME: lambda m: resealed(m, member, edited)}
        expect = "the manifest changed after it was signed"
    elif attack == "added_file":
        add, expect = {"sitecustomize.py": b"print('hi')\n"}, "sitecustomize.py: not in the manifest"
    elif attack == "swapped_handler":  # MAR-INF is the archiver's, outside the hashes: held to the signed model
        edits = {"MAR-INF/MANIFEST.json": lambda b: b.replace(b"image_classifier.py", b"tensor.py")}
        expect = "MAR-INF/MANIFEST.json: handler 'tensor.py' differs"
    else:
        edits, expect = {}, "index_to_name.json: listed in the manifest but missing"
    bad = rewrite(signed_mar, tmp_path / "bad.mar", edits, add)
    if attack == "dropped_file":
        bad = tmp_path / "dropped.mar"
        with zipfile.ZipFile(signed_mar) as src, zipfile.ZipFile(bad, "w") as out:
            for item in src.infolist():
                if item.filename != "index_to_name.json":
                    out.writestr(item, src.read(item.filename))
    check = signature_problems(bad, [keys["public"]])
    print(check)
    assert not check.trusted and expect in str(check), check
    assert refusals([check], require_signed=False) == [check]  # a bad signature refuses even when not required


def test_sign_refuses_a_tampered_archive_replaces_an_old_signature_and_an_old_library(signed_mar, keys, tmp_path):
    bad = rewrite(signed_mar, tmp_path / "bad.mar", {"index_to_name.json": lambda b: b.replace(b"espresso", b"tea")})
    with pytest.raises(SigningError, match="refusing to sign files that differ"):
        sign_archive(bad, keys["private"])
    again = Path(shutil.copy(signed_mar, tmp_path / "again.mar"))
    sign_archive(again, keys["other_private"])  # re-signed by another key: that key now, the first no more
    with zipfile.ZipFile(again) as zf:
        assert zf.namelist().count(SIGNATURE_NAME) == 1
    assert signature_problems(again, [keys["other_public"]]).trusted
    assert not signature_problems(again, [keys["public"]]).trusted
    old = rewrite(signed_mar, tmp_path / "old.mar",
                  {"handlers/integrity.py": lambda b: b.replace(SIGNATURE_NAME.encode(), b"x")})
    with pytest.raises(SigningError, match="older torchserve-kit"):
        sign_archive(old, keys["private"])
    with pytest.raises(SigningError, match="not a usable elliptic-curve private key"):
        sign_archive(again, keys["public"])


def test_the_pod_check_runs_standalone_and_refuses_a_store_with_an_unsigned_archive(default_mar, signed_mar, keys,
                                                                                     tmp_path):
    """export/signing.py as the image `tskit k8s` writes runs it: a file on its own, outside this project."""
    store = tmp_path / "store"
    store.mkdir()
    shutil.copy(signed_mar, store / "a.mar")
    alone = tmp_path / "image"
    alone.mkdir()
    script = shutil.copy(SIGNING, alone / "tskit_signing.py")

    def run(*args):
        return subprocess.run([sys.executable, "-I", str(script), str(store), "--key", str(keys["public"]), *args],
                              capture_output=True, text=True, cwd=alone)

    ok = run("--require-signed")
    assert ok.returncode == 0 and "a.mar: signed by" in ok.stdout, ok.stderr
    shutil.copy(default_mar, store / "b.mar")
    assert run().returncode == 0  # unsigned is allowed unless required
    refused = run("--require-signed")
    assert refused.returncode == 1 and "refusing to serve: b.mar" in refused.stderr, refused.stderr
    assert [c.signed for c in check_store(store, [keys["public"]])] == [True, False]
