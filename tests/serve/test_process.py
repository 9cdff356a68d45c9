"""``blipkit serve`` as a user runs it: the installed command on 127.0.0.1, the default model from a pre-filled Hub
cache, the ready line, requests over real sockets, and SIGTERM: the request in flight is answered, new ones get
503, and the process exits 0."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from blipkit.cli import main
from tests.hubcache import prefill

BLIPKIT = Path(sys.executable).parent / "blipkit"
ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = "Salesforce/blip-image-captioning-base"
WAIT_S = 120  # for the process to start or stop: only a broken server takes this long


def lines(stream) -> queue.Queue:
    """The stream's lines, read in a thread (None at its end), so that waiting for one can time out."""
    read: queue.Queue = queue.Queue()

    def pump():
        for line in stream:
            read.put(line)
        read.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return read


def until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.02)


def in_flight(http: httpx.Client) -> int:
    metrics = http.get("/metrics").text
    return int(next(line for line in metrics.splitlines() if line.startswith("blipkit_in_flight_requests ")).split()[1])


def test_serve_answers_then_drains_on_sigterm_and_exits_0(tmp_path, model_dirs, images):
    prefill(tmp_path / "hf" / "hub", DEFAULT_MODEL, model_dirs["caption"])
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    command = [str(BLIPKIT), "serve", "--port", "0", "--max-wait-ms", "1"]
    log = tmp_path / "stderr.txt"
    with log.open("w") as stderr:  # a file, not a pipe nobody drains
        process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        ready = lines(process.stdout).get(timeout=WAIT_S)
        assert ready and ready.startswith(f"blipkit: serving {DEFAULT_MODEL} at http://127.0.0.1:"), log.read_text()
        url = ready.split(" at ")[-1].strip()
        port = int(url.rsplit(":", 1)[1])
        body = json.dumps({"images": images[:1], "max_new_tokens": 4}).encode()
        with httpx.Client(base_url=url, timeout=WAIT_S) as http:
            caption = http.post("/v1/caption", content=body, headers={"content-type": "application/json"})
            assert caption.status_code == 200, caption.text
            assert caption.json()["model"] == DEFAULT_MODEL
            assert http.get("/ready").status_code == 200
            # A request in flight: its headers sent, half of its body still to come.
            held = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
            head = (
                f"POST /v1/caption HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            held.sendall(head.encode() + body[: len(body) // 2])
            until(lambda: in_flight(http) >= 2, "the held request to reach the app")  # it, and /metrics itself
            process.send_signal(signal.SIGTERM)
            until(lambda: http.get("/ready").status_code == 503, "the server to start draining")
            refused = http.post("/v1/caption", content=body, headers={"content-type": "application/json"})
            assert refused.status_code == 503 and refused.json()["error"]["type"] == "draining"
        held.sendall(body[len(body) // 2 :])
        answer = b""
        while chunk := held.recv(65536):
            answer += chunk
        held.close()
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["results"] == caption.json()["results"]
        assert process.wait(timeout=WAIT_S) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_serve_help_and_bad_flags(capsys):
    with pytest.raises(SystemExit) as shown:
        main(["serve", "--help"])
    assert shown.value.code == 0
    usage = capsys.readouterr().out
    for flag in ("--model", "--max-batch-size", "--max-wait-ms", "--max-queue", "--timeout-s", "--max-body-bytes"):
        assert flag in usage
    with pytest.raises(SystemExit) as refused:
        main(["serve", "--port", "70000"])
    assert refused.value.code == 2 and "expected a port number" in capsys.readouterr().err
