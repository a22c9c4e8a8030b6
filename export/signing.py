"""Signed archives: an OpenSSF model-signing signature over an archive's manifest, checked before serving.

The manifest (`tskit-manifest.json`) holds the sha256 of every file of the archive, so a signature over it
covers them all. `sign_archive` writes the signature (a Sigstore bundle made offline with an elliptic-curve
private key) into the archive as `tskit-signature.json`; `signature_problems` checks, from the zip itself:

  1. the signature verifies with one of the trusted public keys (an edited manifest, one re-sealed with new
     hashes, or one signed by another key fails here);
  2. every file hashes to its manifest entry, none is missing, none is added;
  3. MAR-INF/MANIFEST.json (which the hashes leave out: the archiver writes it) names the model, version,
     handler and files the signed manifest names, and MAR-INF holds nothing else.

This module imports only the standard library and model_signing: `tskit k8s` copies it as-is into the image
it writes, where it runs before TorchServe starts (`python signing.py MODEL_STORE --key PUB.pem
--require-signed`). Keyless Sigstore signing (OIDC identity + transparency log) needs a network: the option
for a CI system that has one (`model_signing sign sigstore`), not for this offline path.
"""
from __future__ import annotations  # the image's Python may be older than this project's

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

MANIFEST_NAME = "tskit-manifest.json"
SIGNATURE_NAME = "tskit-signature.json"
UNHASHED_DIRS = {"MAR-INF", "__pycache__"}  # as handlers/integrity.py (a test holds the two to the same files)
ARCHIVER_FIELDS = {"modelName": "name", "modelVersion": "version", "handler": "handler",
                   "serializedFile": "serialized_file", "modelFile": "model_file"}


class SigningError(ValueError):
    pass


def _model_signing():
    try:
        import model_signing
    except ImportError as err:  # it imports OpenSSL (pyopenssl) without declaring it
        raise SigningError(f"signing needs model-signing and pyopenssl installed ({err}): "
                           "pip install model-signing==1.1.1 pyopenssl") from err
    return model_signing


def hashed_members(zf: zipfile.ZipFile) -> list[str]:
    """The archive members the manifest must list: every file but MAR-INF/, bytecode, the manifest and the
    signature."""
    out = []
    for info in zf.infolist():
        path = PurePosixPath(info.filename)
        if info.is_dir() or path.suffix == ".pyc" or UNHASHED_DIRS & set(path.parts[:-1]):
            continue
        if info.filename not in (MANIFEST_NAME, SIGNATURE_NAME):
            out.append(info.filename)
    return out


def _sha256(zf: zipfile.ZipFile, name: str) -> str:
    digest = hashlib.sha256()
    with zf.open(name) as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def content_problems(zf: zipfile.ZipFile, manifest: dict) -> list[str]:
    """What differs between the zip's files (and MAR-INF/MANIFEST.json) and the manifest."""
    names = [info.filename for info in zf.infolist()]
    problems = [f"{name}: stored twice in the zip" for name in sorted({n for n in names if names.count(n) > 1})]
    expected = manifest.get("files", {})
    members = hashed_members(zf)
    problems += [f"{name}: sha256 differs from the manifest's" for name in members
                 if name in expected and _sha256(zf, name) != expected[name]]
    problems += [f"{name}: listed in the manifest but missing" for name in expected if name not in members]
    problems += [f"{name}: not in the manifest" for name in members if name not in expected]
    archiver = [n for n in names if n.startswith("MAR-INF/") and not n.endswith("/")]
    problems += [f"{name}: not in the manifest" for name in archiver if name != "MAR-INF/MANIFEST.json"]
    if "MAR-INF/MANIFEST.json" in archiver:
        try:
            model = json.loads(zf.read("MAR-INF/MANIFEST.json"))["model"]
        except (ValueError, KeyError):
            return problems + ["MAR-INF/MANIFEST.json: unreadable"]
        signed = manifest.get("model", {})
        problems += [f"MAR-INF/MANIFEST.json: {key} {model.get(key)!r} differs from the manifest's "
                     f"{signed.get(field)!r}" for key, field in ARCHIVER_FIELDS.items()
                     if model.get(key) != signed.get(field)]
    else:
        problems.append("MAR-INF/MANIFEST.json: missing (not a torch-model-archiver archive)")
    return problems


def _write_manifest(zf: zipfile.ZipFile, folder: Path) -> Path:
    path = folder / MANIFEST_NAME
    path.write_bytes(zf.read(MANIFEST_NAME))
    return path


def sign_archive(mar: str | Path, private_key: str | Path, password: str | None = None) -> None:
    """Sign `mar`'s manifest with `private_key` (PEM, elliptic curve) and put the signature in the archive,
    replacing an earlier one. Refuses an archive whose files already differ from its manifest."""
    mar, private_key = Path(mar), Path(private_key)
    if not private_key.is_file():
        raise SigningError(f"private key not found: {private_key}")
    signing = _model_signing().signing
    with tempfile.TemporaryDirectory(prefix="tskit-sign-") as tmp, zipfile.ZipFile(mar) as zf:
        if MANIFEST_NAME not in zf.namelist():
            raise SigningError(f"{mar}: no {MANIFEST_NAME} to sign (build it with `tskit build`)")
        check = zf.read("handlers/integrity.py") if "handlers/integrity.py" in zf.namelist() else b""
        if check and SIGNATURE_NAME.encode() not in check:
            raise SigningError(f"{mar} was built by an older torchserve-kit, whose in-archive check would refuse "
                               f"the {SIGNATURE_NAME} it gets: rebuild it with this one, then sign it")
        problems = content_problems(zf, json.loads(zf.read(MANIFEST_NAME)))
        if problems:
            raise SigningError(f"{mar}: refusing to sign files that differ from its manifest: {'; '.join(problems)}")
        manifest = _write_manifest(zf, Path(tmp))
        bundle = Path(tmp) / SIGNATURE_NAME
        try:
            signing.Config().use_elliptic_key_signer(private_key=private_key, password=password).sign(manifest,
                                                                                                       bundle)
        except (ValueError, TypeError) as err:
            raise SigningError(f"{private_key}: not a usable elliptic-curve private key ({err})") from err
        signed = bundle.read_bytes()
        has_old = SIGNATURE_NAME in zf.namelist()
    if has_old:
        _rewrite_without(mar, SIGNATURE_NAME)
    with zipfile.ZipFile(mar, "a", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(SIGNATURE_NAME, signed)


def _rewrite_without(mar: Path, member: str) -> None:
    tmp = mar.with_name(mar.name + ".tmp")
    with zipfile.ZipFile(mar) as src, zipfile.ZipFile(tmp, "w") as dst:
        for item in src.infolist():
            if item.filename != member:
                dst.writestr(item, src.read(item.filename))
    shutil.move(tmp, mar)


def generate_key_pair(out_dir: str | Path, name: str = "tskit-signing") -> tuple[Path, Path]:
    """A new P-256 key pair: OUT/NAME.key.pem (private, mode 600) and OUT/NAME.pub.pem (public)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    private, public = out_dir / f"{name}.key.pem", out_dir / f"{name}.pub.pem"
    if private.exists():
        raise SigningError(f"{private} exists: keep it, or remove it first")
    key = ec.generate_private_key(ec.SECP256R1())
    private.touch(mode=0o600)
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


@dataclass
class SignatureCheck:
    archive: str
    signed: bool
    key: str | None = None  # the trusted key that verified it
    problems: list[str] = field(default_factory=list)

    @property
    def trusted(self) -> bool:
        return self.signed and self.key is not None and not self.problems

    def __str__(self) -> str:
        if self.trusted:
            return f"{self.archive}: signed by {self.key}; every file matches"
        if not self.signed and not self.problems:
            return f"{self.archive}: unsigned"
        return f"{self.archive}: REFUSED: " + "; ".join(self.problems)


def signature_problems(mar: str | Path, public_keys: list[str | Path]) -> SignatureCheck:
    """Check `mar`'s signature against the trusted `public_keys`, then every file against the signed manifest."""
    mar = Path(mar)
    if not public_keys:
        raise SigningError("no trusted public key given (--key PUBLIC.pem)")
    for key in public_keys:
        if not Path(key).is_file():
            raise SigningError(f"public key not found: {key}")
    try:
        zf = zipfile.ZipFile(mar)
    except (zipfile.BadZipFile, OSError) as err:
        return SignatureCheck(str(mar), False, problems=[f"not a readable archive ({err})"])
    with tempfile.TemporaryDirectory(prefix="tskit-verify-") as tmp, zf:
        names = zf.namelist()
        if SIGNATURE_NAME not in names:
            return SignatureCheck(str(mar), False)
        if MANIFEST_NAME not in names:
            return SignatureCheck(str(mar), True, problems=[f"signed but has no {MANIFEST_NAME}"])
        manifest_file = _write_manifest(zf, Path(tmp))
        bundle = Path(tmp) / SIGNATURE_NAME
        bundle.write_bytes(zf.read(SIGNATURE_NAME))
        verifying = _model_signing().verifying
        refusals = []
        for key in public_keys:
            try:
                verifying.Config().use_elliptic_key_verifier(public_key=key).verify(manifest_file, bundle)
            except Exception as err:  # model_signing raises ValueError, cryptography's InvalidSignature, ...
                refusals.append(f"{Path(key).name}: {_why(err)}")
                continue
            manifest = json.loads(manifest_file.read_text())
            return SignatureCheck(str(mar), True, str(key), content_problems(zf, manifest))
    return SignatureCheck(str(mar), True, problems=["the signature does not verify with a trusted key ("
                                                    + "; ".join(refusals) + ")"])


def _why(err: Exception) -> str:
    text = str(err)
    if text.startswith("Key mismatch"):
        return "signed with another key"
    if text.startswith("Signature mismatch"):
        return "the manifest changed after it was signed"
    return f"{type(err).__name__}: {text[:160]}"


def check_store(store: str | Path, public_keys: list[str | Path]) -> list[SignatureCheck]:
    """Every archive of a model store, checked."""
    return [signature_problems(mar, public_keys) for mar in sorted(Path(store).glob("*.mar"))]


def refusals(checks: list[SignatureCheck], require_signed: bool) -> list[SignatureCheck]:
    """The checks that stop a server from starting: a bad signature or file always, unsigned when required."""
    return [c for c in checks if c.problems or (require_signed and not c.trusted)]


def main(argv=None) -> int:
    """Verify a model store before TorchServe starts (the image `tskit k8s` writes runs this)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store", help="model store folder (its *.mar)")
    ap.add_argument("--key", action="append", required=True, help="trusted public key (PEM); repeat for several")
    ap.add_argument("--require-signed", action="store_true", help="refuse unsigned archives too")
    args = ap.parse_args(argv)
    try:
        checks = check_store(args.store, args.key)
    except SigningError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not checks:
        print(f"error: no .mar in {args.store}", file=sys.stderr)
        return 2
    for check in checks:
        print(check)
    refused = refusals(checks, args.require_signed)
    if refused:
        print(f"refusing to serve: {', '.join(Path(c.archive).name for c in refused)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
