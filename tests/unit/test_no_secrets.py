"""No secret is in an image or a manifest: no PEM private key anywhere under docker/ or k8s/, no Secret
object or secretGenerator carrying its material, and no password- or token-like setting with a literal
value. TLS files reach a pod as a Secret mounted by name (created out of band), never as text here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
FILES = sorted(p for d in ("docker", "k8s") for p in (REPO / d).rglob("*") if p.is_file())
PEM_PRIVATE_KEY = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")
SECRET_NAME = re.compile(r"(PASSWORD|PASSWD|TOKEN|SECRET|API_?KEY|PRIVATE_?KEY|CREDENTIAL)", re.IGNORECASE)
# Settings that say how a secret is reached, not what it is (kubelet's own switch, a path, a reference).
NOT_A_VALUE = re.compile(r"^(true|false|/\S*|)$")
REFERENCES = ("secretName",)  # a volume's Secret, by name: the material stays in the cluster


def secrets_in_text(text: str) -> list[str]:
    """PEM private keys, and ``NAME=value`` / ``NAME: value`` lines whose name says secret and value is literal."""
    found = [m.group(0) for m in PEM_PRIVATE_KEY.finditer(text)]
    for line in text.splitlines():
        line = line.split("#", 1)[0]
        match = re.match(r"\s*(?:ENV\s+|ARG\s+|-\s+)?([A-Za-z_][\w.-]*)\s*[=:]\s*(\S.*)?$", line)
        if match and match.group(1) in REFERENCES:
            continue
        if match and SECRET_NAME.search(match.group(1)) and not NOT_A_VALUE.match((match.group(2) or "").strip()):
            found.append(line.strip())
    return found


def secrets_in_manifest(doc: dict) -> list[str]:
    """A Secret with data, a secretGenerator, or a container env var named like a secret with a literal value."""
    found = []
    if doc.get("kind") == "Secret" and (doc.get("data") or doc.get("stringData")):
        found.append(f"Secret {doc.get('metadata', {}).get('name')} carries its data")
    if doc.get("secretGenerator"):
        found.append("a secretGenerator (its literals or files would be in the repo)")
    spec = doc.get("spec", {}).get("template", {}).get("spec", {}) if isinstance(doc.get("spec"), dict) else {}
    for container in [*spec.get("containers", []), *spec.get("initContainers", [])]:
        for env in container.get("env", []):
            if SECRET_NAME.search(env.get("name", "")) and "value" in env:
                found.append(f"{container.get('name')}: env {env['name']} has a literal value")
    return found


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_private_key_or_secret_is_in_an_image_or_a_manifest(path):
    text = path.read_text(errors="replace")
    assert secrets_in_text(text) == []
    if path.suffix in (".yaml", ".yml"):
        docs = [d for d in yaml.safe_load_all(text) if isinstance(d, dict)]
        assert [s for d in docs for s in secrets_in_manifest(d)] == []


def test_the_checks_catch_a_planted_key_a_secret_object_and_a_literal_password():
    """So the test above can fail: each kind of leak it looks for is found."""
    key = "-----BEGIN " + "EC PRIVATE KEY-----\nMHcCAQEE\n-----END EC PRIVATE KEY-----"
    assert secrets_in_text(key) == ["-----BEGIN EC PRIVATE KEY-----"]
    assert secrets_in_text("ENV DB_PASSWORD=hunter2\nCODEDSERVE_FRONTEND_TLS_KEY=/etc/tls/tls.key") == [
        "ENV DB_PASSWORD=hunter2"
    ]
    assert secrets_in_text("automountServiceAccountToken: false") == []
    assert secrets_in_text("secretName: codedserve-tls\nsecretKey: hunter2") == ["secretKey: hunter2"]
    secret = {"kind": "Secret", "metadata": {"name": "tls"}, "data": {"tls.key": "LS0t"}}
    deployment = {
        "spec": {"template": {"spec": {"containers": [{"name": "f", "env": [{"name": "API_KEY", "value": "x"}]}]}}}
    }
    assert secrets_in_manifest(secret) == ["Secret tls carries its data"]
    assert secrets_in_manifest(deployment) == ["f: env API_KEY has a literal value"]
    assert secrets_in_manifest({"kind": "Secret", "metadata": {"name": "tls"}, "type": "kubernetes.io/tls"}) == []
