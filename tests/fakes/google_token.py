"""A fake of Google's OAuth 2.0 token endpoint, for service-account credentials, on 127.0.0.1.

Application Default Credentials from a service-account file (GOOGLE_APPLICATION_CREDENTIALS)
get their access tokens by POSTing a signed JWT to the file's `token_uri` (the JWT bearer grant,
RFC 7523): `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=<JWT>`. This server
checks the assertion the way Google does (signed by the account's key, issued by its email, for
Google's token audience, asking for a scope) and answers `{"access_token", "expires_in", "token_type"}`.
`service_account_file()` writes a key file pointing at it; `issued` holds the tokens handed out,
for the fake Live server to accept on its Vertex AI path.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth import jwt

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
AUDIENCE = "https://oauth2.googleapis.com/token"  # what assertions are addressed to, wherever they are sent
EMAIL = "phonebot@phonebot-test.iam.gserviceaccount.com"


class TokenServer:
    def __init__(self) -> None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.private_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        self.public_pem = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()
        self.issued: set[str] = set()
        self.grants: list[dict[str, Any]] = []  # the claims of each assertion accepted
        self.refused: list[str] = []
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._http.serve_forever, name="fake token server", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._http.server_address[1]}/token"

    def service_account_file(self, directory: Path, project: str) -> Path:
        path = directory / "service-account.json"
        path.write_text(json.dumps({
            "type": "service_account", "project_id": project, "private_key_id": "k1",
            "private_key": self.private_pem, "client_email": EMAIL, "client_id": "1",
            "token_uri": self.url,
        }))
        return path

    def __enter__(self) -> TokenServer:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._thread.join(5)

    def _grant(self, form: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
        if form.get("grant_type") != [JWT_BEARER] or len(form.get("assertion", [])) != 1:
            return 400, {"error": "unsupported_grant_type"}
        try:
            claims = jwt.decode(form["assertion"][0], certs=self.public_pem, audience=AUDIENCE)
        except ValueError as error:
            self.refused.append(str(error))
            return 400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
        if claims.get("iss") != EMAIL or not claims.get("scope"):
            return 400, {"error": "invalid_scope"}
        self.grants.append(claims)
        token = f"ya29.fake-{len(self.grants)}"
        self.issued.add(token)
        return 200, {"access_token": token, "expires_in": 3600, "token_type": "Bearer"}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0))).decode()
                status, answer = server._grant(parse_qs(body)) if self.path == "/token" else (404, {})
                payload = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler
