"""In-cluster smoke test: run by the `helm test` pod and the client Job with the service image's python3.

Waits for GET /readyz to answer 200, then POSTs the malignant example row to /predict and exits
non-zero unless the answer's diagnosis is "malignant". Standard library only: the service image is
the only image a cluster can be assumed to have, and nothing may be installed at run time.
Environment: SERVICE_URL (http://<service>.<namespace>.svc:<port>), EXAMPLE_FILE, TIMEOUT_SECONDS,
and TOKEN_FILE when the service requires a token: the pod's projected ServiceAccount token, sent as
`Authorization: Bearer`. It is read at the call, as the kubelet replaces it before it expires.
"""

import json
import os
import sys
import time
import urllib.error
import urllib.request

url = os.environ["SERVICE_URL"].rstrip("/")
deadline = time.monotonic() + float(os.environ.get("TIMEOUT_SECONDS", "120"))
token_file = os.environ.get("TOKEN_FILE")
with open(os.environ["EXAMPLE_FILE"], "rb") as example_file:
    example = example_file.read()

while True:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=5) as response:
            if response.status == 200:
                break
            problem = f"HTTP {response.status}"
    except OSError as error:  # URLError, HTTPError, timeouts and DNS failures are all OSErrors
        problem = repr(error)
    if time.monotonic() > deadline:
        sys.exit(f"FAIL: {url}/readyz did not answer 200: {problem}")
    time.sleep(2)
print(f"ok: GET {url}/readyz")

headers = {"Content-Type": "application/json"}
if token_file:
    with open(token_file, encoding="ascii") as token:
        headers["Authorization"] = f"Bearer {token.read().strip()}"
request = urllib.request.Request(f"{url}/predict", data=example, headers=headers, method="POST")
try:
    with urllib.request.urlopen(request, timeout=30) as response:
        answer = json.load(response)
except urllib.error.HTTPError as error:
    detail = error.read()[:500].decode(errors="replace")
    sys.exit(f"FAIL: POST {url}/predict: HTTP {error.code}: {detail}")
except (OSError, ValueError) as error:
    sys.exit(f"FAIL: POST {url}/predict: {error!r}")
if not isinstance(answer, dict) or answer.get("diagnosis") != "malignant":
    sys.exit(f"FAIL: POST {url}/predict: expected diagnosis 'malignant', got {answer!r}")
print(f"ok: POST {url}/predict -> {json.dumps(answer)}")
