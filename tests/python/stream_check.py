"""Drives exec, attach and port-forward on a skiff node with the official Python `kubernetes`
client (`kubernetes.stream.stream` / `portforward`), over the subprotocol it negotiates by
itself (it offers v5 and v4) and over v4 forced, plus raw sessions in the base64 and pre-v4
framings through the API server. Run by tests/e2e/streaming.rs inside the node's network
namespace:

    stream_check.py KUBECONFIG NAMESPACE

with pods `sleeper` (sleep), `reader` (stdin: true, echoes `got LINE`) and `web` (busybox httpd
on 8080 serving `hello-pf`) running. Prints "stream checks passed" and exits 0, or fails
with the first check that did not hold."""
import base64
import hashlib
import json
import sys
import time

from kubernetes import client, config
from kubernetes.stream import portforward, stream
from kubernetes.stream.ws_client import create_websocket, get_websocket_url
from websocket import ABNF

config.load_kube_config(config_file=sys.argv[1])
ns = sys.argv[2]
v1 = client.CoreV1Api()
V4 = {"sec-websocket-protocol": "v4.channel.k8s.io"}


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print("ok:", what.split(":")[0], flush=True)


def finished(resp, timeout=30):
    """Reads until the server closes; returns (stdout, stderr, exit code)."""
    resp.run_forever(timeout=timeout)
    check(not resp.is_open(), f"session ended within {timeout}s")
    return resp.read_stdout(), resp.read_stderr(), resp.returncode


# 1. exec with stdout, stderr and an exit code, over what the client negotiates (v5) and v4.
script = ["sh", "-c", "echo out; echo err >&2; exit 3"]
for headers, want in [(None, "v5.channel.k8s.io"), (V4, "v4.channel.k8s.io")]:
    kw = {"_headers": headers} if headers else {}
    resp = stream(v1.connect_get_namespaced_pod_exec, "sleeper", ns, command=script,
                  stdin=False, stdout=True, stderr=True, tty=False, _preload_content=False, **kw)
    check(resp.subprotocol == want, f"{want} exec negotiated: {resp.subprotocol}")
    out, err, code = finished(resp)
    check((out, err, code) == ("out\n", "err\n", 3), f"{want} exec output and exit code: {(out, err, code)}")

# The one-call form returns the output.
out = stream(v1.connect_get_namespaced_pod_exec, "sleeper", ns, command=["echo", "hello there"],
             stdin=False, stdout=True, stderr=True, tty=False)
check(out == "hello there\n", f"preloaded exec output: {out!r}")

# 2. exec with stdin. v5: the client's close_channel(0) ends cat's input; binary stdin, 100 kB.
blob = bytes(range(256)) * 400
resp = stream(v1.connect_get_namespaced_pod_exec, "sleeper", ns, command=["md5sum"],
              stdin=True, stdout=True, stderr=True, tty=False, _preload_content=False, binary=True)
for i in range(0, len(blob), 16384):
    resp.write_stdin(blob[i:i + 16384])
resp.close_channel(0)
out, err, code = finished(resp)
check(out.split()[0].decode() == hashlib.md5(blob).hexdigest() and code == 0,
      f"v5 binary stdin reached md5sum whole: {out!r} {err!r} {code}")
# Text stdin (sent as text frames by the client).
resp = stream(v1.connect_get_namespaced_pod_exec, "sleeper", ns, command=["cat"],
              stdin=True, stdout=True, stderr=True, tty=False, _preload_content=False)
resp.write_stdin("line1\nline2\n")
resp.close_channel(0)
out, err, code = finished(resp)
check((out, code) == ("line1\nline2\n", 0), f"v5 text stdin through cat to EOF: {(out, err, code)}")
# v4 has no close signal: a command that reads one line.
resp = stream(v1.connect_get_namespaced_pod_exec, "sleeper", ns, command=["sh", "-c", "read x; echo got $x; exit 5"],
              stdin=True, stdout=True, stderr=True, tty=False, _preload_content=False, _headers=V4)
check(resp.subprotocol == "v4.channel.k8s.io", f"v4 stdin exec negotiated: {resp.subprotocol}")
resp.write_stdin("hello\n")
out, err, code = finished(resp)
check((out, code) == ("got hello\n", 5), f"v4 stdin reached the command: {(out, err, code)}")

# 3. attach to a container with stdin, over v4 (the client detaches by closing) and v5.
for headers, want in [(V4, "v4.channel.k8s.io"), (None, "v5.channel.k8s.io")]:
    kw = {"_headers": headers} if headers else {}
    resp = stream(v1.connect_get_namespaced_pod_attach, "reader", ns, stdin=True, stdout=True,
                  stderr=True, tty=False, _preload_content=False, **kw)
    check(resp.subprotocol == want, f"{want} attach negotiated: {resp.subprotocol}")
    resp.write_stdin(f"ping {want}\n")
    line = resp.readline_stdout(timeout=20)
    check(line == f"got ping {want}", f"{want} attach input and output: {line!r}")
    if want.startswith("v5"):
        resp.close_channel(0)
        _, _, code = finished(resp)
        check(code == 0, f"v5 attach ends with Success when stdin closes: {code}")
    else:
        resp.close()

# 4. port-forward (v4 channel protocol): one HTTP request per port; a port nobody listens on
# reports on its error channel.
pf = portforward(v1.connect_get_namespaced_pod_portforward, "web", ns, ports="8080,9999")
sock = pf.socket(8080)
sock.settimeout(20)
sock.sendall(b"GET / HTTP/1.0\r\nHost: web\r\n\r\n")
reply = b""
while True:
    chunk = sock.recv(65536)
    if not chunk:
        break
    reply += chunk
sock.close()
check(reply.startswith(b"HTTP/1.") and b"hello-pf" in reply, f"port-forward reached httpd: {reply[:200]!r}")
check(pf.error(8080) is None, f"no error on 8080: {pf.error(8080)!r}")
deadline = time.time() + 20
while pf.error(9999) is None and time.time() < deadline:
    time.sleep(0.1)
check("error forwarding port 9999" in (pf.error(9999) or ""), f"refused port reported: {pf.error(9999)!r}")
pf.close()

# 5. Raw sessions through the API server in framings the client does not decode itself.
cfg = client.Configuration.get_default_copy()
auth = {"authorization": cfg.api_key["authorization"]} if "authorization" in (cfg.api_key or {}) else {}


def raw(path, protocol):
    """Opens `path` offering `protocol`; returns (negotiated, [(opcode, data)]) until the close."""
    ws = create_websocket(cfg, get_websocket_url(cfg.host + path), {"sec-websocket-protocol": protocol, **auth})
    negotiated = {k.lower(): v for k, v in ws.getheaders().items()}.get("sec-websocket-protocol")
    ws.settimeout(20)
    frames = []
    while True:
        opcode, frame = ws.recv_data_frame(True)
        if opcode == ABNF.OPCODE_CLOSE:
            break
        if opcode in (ABNF.OPCODE_TEXT, ABNF.OPCODE_BINARY):
            frames.append((opcode, frame.data))
    ws.close()
    return negotiated, frames


exec_path = f"/api/v1/namespaces/{ns}/pods/sleeper/exec?stdout=true&command="
proto, frames = raw(exec_path + "echo&command=b64", "v4.base64.channel.k8s.io")
check(proto == "v4.base64.channel.k8s.io" and all(op == ABNF.OPCODE_TEXT for op, _ in frames),
      f"base64 framing is text frames: {proto} {frames}")
decoded = [(d[0] - ord("0"), base64.b64decode(d[1:])) for _, d in frames]
check(b"".join(d for ch, d in decoded if ch == 1) == b"b64\n", f"base64 stdout: {decoded}")
status = json.loads(b"".join(d for ch, d in decoded if ch == 3))
check(status["status"] == "Success", f"base64 v4 status: {status}")

proto, frames = raw(exec_path + "sh&command=-c&command=exit+4", "channel.k8s.io")
errors = b"".join(d[1:] for _, d in frames if d[:1] == b"\x03").decode()
check(proto == "channel.k8s.io" and errors.endswith("exit code 4") and not errors.startswith("{"),
      f"channel.k8s.io reports the failure as text: {proto} {errors!r}")
_, frames = raw(exec_path + "true", "channel.k8s.io")
check(not [d for _, d in frames if d[:1] == b"\x03"], f"channel.k8s.io says nothing for success: {frames}")

print("stream checks passed", flush=True)
