"""TLS and mutual TLS: a CA, a server certificate (for 127.0.0.1 and localhost) and client
certificates made with the openssl CLI (Debian package openssl, scripts/setup) for this test.

- --tls-cert/--tls-key: a client that trusts the CA is served; a plaintext client and a client
  that trusts another CA are not.
- plus --tls-client-ca: a client without a certificate, or with one from another CA, is
  refused; a client with a certificate from the CA is served (Python client and its CLI).
"""

import json
import shutil
import subprocess
import sys

import grpc
import pytest

import service_common as sc


def _openssl(*args, cwd):
    exe = shutil.which("openssl")
    if exe is None:
        pytest.fail("the openssl CLI is missing: run scripts/setup (Debian package openssl)")
    r = subprocess.run([exe] + list(args), cwd=cwd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, (args, r.stderr)


def _ca(d, name):
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2",
             "-subj", f"/CN=semshare test {name}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)


def _leaf(d, name, ca, ext):
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
    (d / f"{name}.ext").write_text(ext)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext",
             cwd=d)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    _ca(d, "ca")
    _ca(d, "other-ca")
    _leaf(d, "server", "ca", "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
          "extendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n")
    _leaf(d, "client", "ca", "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\n")
    _leaf(d, "stranger", "other-ca",
          "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\n")
    return d


def _served(client):
    r = client.generate("Hi", max_tokens=1, timeout=60)
    return r.usage.completion_tokens == 1


def _refused(client):
    """Fails the handshake: UNAVAILABLE (gRPC reports a failed TLS connection so)."""
    code, details = sc.code_of(lambda: client.generate("Hi", max_tokens=1, timeout=15))
    assert code == grpc.StatusCode.UNAVAILABLE, (code, details)
    return True


def test_tls(make_server, pki):
    s = make_server(["--tls-cert", pki / "server.pem", "--tls-key", pki / "server.key",
                     "--threads", 2], api_keys=False, name="tls")
    assert "(TLS)" in s.log()
    with sc.Client(s.target, root_certificates=pki / "ca.pem") as c:
        assert _served(c)
        assert sc.health_status(c.channel) == "SERVING"
    with sc.Client(s.target) as plaintext:
        assert _refused(plaintext)
    with sc.Client(s.target, root_certificates=pki / "other-ca.pem") as wrong_ca:
        assert _refused(wrong_ca)
    # Still serving after the failed handshakes.
    with sc.Client(f"localhost:{s.grpc_port}", root_certificates=pki / "ca.pem") as c:
        assert _served(c)


def test_mutual_tls(make_server, pki):
    s = make_server(["--tls-cert", pki / "server.pem", "--tls-key", pki / "server.key",
                     "--tls-client-ca", pki / "ca.pem", "--threads", 2], api_keys=False,
                    name="mtls")
    assert "(mutual TLS)" in s.log()
    with sc.Client(s.target, root_certificates=pki / "ca.pem") as no_cert:
        assert _refused(no_cert)
    with sc.Client(s.target, root_certificates=pki / "ca.pem",
                   certificate_chain=pki / "stranger.pem",
                   private_key=pki / "stranger.key") as stranger:
        assert _refused(stranger)
    with sc.Client(s.target, root_certificates=pki / "ca.pem",
                   certificate_chain=pki / "client.pem", private_key=pki / "client.key") as c:
        assert _served(c)
    # The Python client's command line with the same files.
    r = subprocess.run([sys.executable, "-m", "semshare_client", "generate", "--target", s.target,
                        "--prompt", sc.SHORT_PROMPT, "--max-tokens", "4", "--tls-root",
                        pki / "ca.pem", "--tls-cert", pki / "client.pem", "--tls-key",
                        pki / "client.key", "--json"],
                       capture_output=True, text=True, timeout=120,
                       cwd=sc.HERE)
    assert r.returncode == 0, r.stderr
    usage = json.loads(r.stdout)["usage"]
    assert 1 <= int(usage["completionTokens"]) <= 4 and int(usage["promptTokens"]) > 0, usage
    r = subprocess.run([sys.executable, "-m", "semshare_client", "generate", "--target", s.target,
                        "--prompt", "Hi", "--tls-root", pki / "ca.pem", "--timeout", "15"],
                       capture_output=True, text=True, timeout=120,
                       cwd=sc.HERE)
    assert r.returncode == 1 and r.stderr.startswith("UNAVAILABLE"), (r.returncode, r.stderr)
