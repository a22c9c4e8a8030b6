"""The load generators against a small local HTTP server: what they send and how they count."""
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tskit.loadgen import closed_loop, wrk_closed_loop


class Answers(BaseHTTPRequestHandler):
    """200 for the body b"good" with the expected header, 503 for anything else; keep-alive like TorchServe."""
    protocol_version = "HTTP/1.1"
    seen: list = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.seen.append((body, self.headers.get("Authorization")))
        status = 200 if body == b"good" and self.headers.get("Authorization") == "Bearer k" else 503
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


@pytest.fixture()
def url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Answers)
    Answers.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/predictions/m"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("generator", [closed_loop, wrk_closed_loop], ids=["python", "wrk"])
def test_bodies_in_turn_with_headers_and_errors_counted(url, generator):
    result = generator(url, {"Authorization": "Bearer k"}, [b"good", b"bad"], 2, 1.0)
    summary = result.summary()
    bodies = [body for body, _ in Answers.seen]
    assert set(bodies) == {b"good", b"bad"} and all(auth == "Bearer k" for _, auth in Answers.seen)
    assert summary["ok"] > 0 and summary["errors"] > 0
    assert abs(summary["ok"] - summary["errors"]) <= 2 + 0.1 * len(bodies)  # every other request fails
    assert summary["generator"] == ("wrk" if generator is wrk_closed_loop else "python")
    assert summary["client_cpu"] >= 0 and summary["p50_ms"] <= summary["p99_ms"]
