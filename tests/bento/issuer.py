"""A token issuer on 127.0.0.1 that behaves as a Kubernetes API server does for ServiceAccount tokens:
an OpenID discovery document and a JWKS of real RSA and EC keys, and tokens signed with them carrying
the claims a ServiceAccount token carries. It counts the key fetches and what credentials they bring."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from harness.servers import free_port

AUDIENCE = "breast-cancer-classifier"


@dataclass
class SigningKey:
    algorithm: str
    private: Any
    kid: str = field(default_factory=lambda: uuid.uuid4().hex[:16])

    @classmethod
    def rsa(cls) -> SigningKey:
        return cls("RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048))

    @classmethod
    def ec(cls) -> SigningKey:
        return cls("ES256", ec.generate_private_key(ec.SECP256R1()))

    def jwk(self) -> dict[str, Any]:
        algorithm = jwt.get_algorithm_by_name(self.algorithm)
        return {
            **json.loads(algorithm.to_jwk(self.private.public_key())),
            "kid": self.kid,
            "alg": self.algorithm,
            "use": "sig",
        }


@dataclass
class Issuer:
    url: str
    keys: list[SigningKey]
    failing: bool = False  # answer 500 to every request, as an unreachable API server would not
    delay: float = 0.0  # seconds before each answer, as a busy API server's
    drip: float = 0.0  # seconds between the bytes of the keys' answer: a stalled one
    padding: int = 0  # bytes of white space after the keys' document: an answer without end
    sent: int = 0  # bytes of the keys' answers written
    fetches: int = 0
    credentials: list[str | None] = field(default_factory=list)

    @property
    def jwks_url(self) -> str:
        return f"{self.url}/openid/v1/jwks"

    @property
    def discovery_url(self) -> str:
        return f"{self.url}/.well-known/openid-configuration"

    def token(
        self,
        namespace: str = "apps",
        name: str = "frontend",
        *,
        key: SigningKey | None = None,
        audience: str | list[str] = AUDIENCE,
        issuer: str | None = None,
        lifetime: float = 600,
        not_before: float = 0,
        headers: dict[str, Any] | None = None,
    ) -> str:
        key = key or self.keys[0]
        now = time.time()
        claims = {
            "iss": issuer or self.url,
            "sub": f"system:serviceaccount:{namespace}:{name}",
            "aud": [audience] if isinstance(audience, str) else audience,
            "iat": int(now),
            "nbf": int(now + not_before),
            "exp": int(now + lifetime),
            "kubernetes.io": {
                "namespace": namespace,
                "serviceaccount": {"name": name, "uid": str(uuid.uuid4())},
            },
        }
        return jwt.encode(
            claims, key.private, algorithm=key.algorithm, headers={"kid": key.kid, **(headers or {})}
        )

    def settings(self, credentials_file: str, **allow: str) -> dict[str, str]:
        """The service's environment for this issuer (see k8s/runtime-contract.yaml)."""
        return {
            "AUTH_ENABLED": "true",
            "AUTH_AUDIENCE": AUDIENCE,
            "AUTH_DISCOVERY_URL": self.discovery_url,
            "AUTH_JWKS_URL": self.jwks_url,
            "AUTH_CREDENTIALS_FILE": credentials_file,
            "AUTH_CA_FILE": "/nonexistent/ca.crt",
            **allow,
        }


@contextmanager
def running_issuer(*keys: SigningKey) -> Iterator[Issuer]:
    port = free_port()
    issuer = Issuer(f"http://127.0.0.1:{port}", list(keys) or [SigningKey.rsa(), SigningKey.ec()])

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            time.sleep(issuer.delay)
            if issuer.failing:
                self.send_error(500)
                return
            if self.path == "/.well-known/openid-configuration":
                body = {"issuer": issuer.url, "jwks_uri": issuer.jwks_url}
            elif self.path == "/openid/v1/jwks":
                issuer.fetches += 1
                issuer.credentials.append(self.headers.get("Authorization"))
                body = {"keys": [key.jwk() for key in issuer.keys]}
            else:
                self.send_error(404)
                return
            content = json.dumps(body).encode()
            keys = self.path == "/openid/v1/jwks"
            padding = issuer.padding if keys else 0
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(content) + padding))
            self.end_headers()
            try:
                if keys and issuer.drip:
                    for byte in range(len(content)):
                        self.wfile.write(content[byte : byte + 1])
                        self.wfile.flush()
                        issuer.sent += 1
                        time.sleep(issuer.drip)
                    return
                self.wfile.write(content)
                issuer.sent += len(content) if keys else 0
                while padding > 0:  # written as the client reads it, never held whole
                    chunk = b" " * min(padding, 65536)
                    self.wfile.write(chunk)
                    issuer.sent, padding = issuer.sent + len(chunk), padding - len(chunk)
            except OSError:  # the client gave up
                pass

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield issuer
    finally:
        server.shutdown()
        server.server_close()
