"""A throwaway PKI for mutual TLS on loopback: a CA, the collector's certificate and client
certificates (the `pki` fixture in tests/conftest.py, bench/collector.py --tls). Needs `cryptography` (a test
extra: `make test` installs it)."""
from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path


class PKI:
    """A CA, the collector's certificate (localhost / 127.0.0.1) and client certificates."""

    def __init__(self, root: Path):
        from cryptography.hazmat.primitives.asymmetric import ec
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._ec = ec
        self.ca_key, self.ca_cert = self._ca("egs test CA")
        self.write("ca", self.ca_key, self.ca_cert)
        self.issue("collector", "localhost", dns=["localhost"], ips=["127.0.0.1"], server=True)

    def _ca(self, name):
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.x509.oid import NameOID
        key = self._ec.generate_private_key(self._ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                             content_commitment=False, key_encipherment=False, data_encipherment=False,
                                             key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
                .sign(key, hashes.SHA256()))
        return key, cert

    def write(self, name, key, cert) -> tuple[Path, Path]:
        from cryptography.hazmat.primitives import serialization
        key_path, cert_path = self.root / f"{name}.key", self.root / f"{name}.crt"
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cert_path, key_path

    def issue(self, name: str, cn: str | None, dns=(), ips=(), server=False, ca=None) -> tuple[Path, Path]:
        """A certificate signed by the CA (or `ca`); `cn` None: a subject without a CN."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
        ca_key, ca_cert = ca or (self.ca_key, self.ca_cert)
        key = self._ec.generate_private_key(self._ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else []))
                   .issuer_name(ca_cert.subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                                         else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
        names = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return self.write(name, key, builder.sign(ca_key, hashes.SHA256()))

    def rogue(self, name: str, cn: str) -> tuple[Path, Path]:
        """A client certificate for `cn` from a CA the collector does not trust."""
        return self.issue(name, cn, ca=self._ca("rogue CA"))
