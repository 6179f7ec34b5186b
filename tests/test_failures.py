"""Failures that explain themselves: a service that exits while apply waits on its health fails the
host at once, with how it ended, its restarts and the end of its log.

The crash-looping engine is the real one (xllamacpp) given a flag it does not know, through the
playbook's ``args: {extra: [...]}`` (validation cannot know every engine flag): it exits 2 with
its own error line, and supervisord starts it again and again. The wait on a service that
stays unhealthy (still loading) is health_check.py run for real against a real HTTP server that
answers 503, with a short deadline.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.conftest import REPO
from tests.test_status import ENGINE, local_site, stop_site

HEALTH_CHECK = REPO / "toolkit/services/health_check.py"


def test_crash_looping_engine_fails_the_host_with_its_own_error_line(tmp_path, gemma_gguf):
    ws = local_site(tmp_path, gemma_gguf, extra=["--no-such-flag"])
    try:
        started = time.monotonic()
        result = ws.apply()
        seconds = time.monotonic() - started
        out = result.stdout + result.stderr
        print(f"apply with a crash-looping engine failed after {seconds:.1f} s")
        assert result.returncode == 1, out
        assert f"localhost: FAILED: {ENGINE} exited while apply waited on its health (exit 2" in out
        assert "unrecognized arguments: --no-such-flag" in out  # the engine's own words
        assert f"lines of {ws.data}/logs/{ENGINE}.log:" in out
        # the wait was on the service, not on the deadline: it was still waiting for it
        wait_started = out.index("waiting for services to be healthy")
        assert "not healthy after" not in out[wait_started:]
    finally:
        stop_site(ws)


class Loading(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_a_service_still_loading_at_the_deadline_says_so_with_its_last_log_line(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Loading)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    log = tmp_path / "engine.log"
    log.write_text("loading model\nload_tensors: 40% done\n")
    url = f"http://127.0.0.1:{server.server_port}/health"
    running = "printf '@svc\\tengine-x\\trunning\\t4242\\t3\\t0\\t-\\n'"
    spec = {
        "urls": [url],
        "deadline_s": 2,
        "watch": {
            "script": running,
            "services": {url: "engine-x"},
            "tails": {"engine-x": f"tail -n 20 {log}"},
        },
    }
    try:
        out = subprocess.run(
            [sys.executable, str(HEALTH_CHECK), json.dumps(spec)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        server.shutdown()
        server.server_close()
    assert out.returncode == 1
    report = json.loads(out.stdout)
    assert report["health"] == {url: 503}
    assert report["waiting"] == {"engine-x": {"code": 503, "log": ["load_tensors: 40% done"]}}
    assert "failed" not in report


def test_a_service_whose_pid_changes_while_waiting_counts_as_exited(tmp_path):
    """The watch also catches a restart that the manager does not count (runit): the pid."""
    pids = tmp_path / "pid"
    pids.write_text("100")
    script = (
        f"p=$(cat {pids}); echo 101 > {pids}; "
        "printf '@svc\\tengine-x\\trunning\\t%s\\t0\\t-\\t-\\n' \"$p\""
    )
    spec = {
        "urls": ["http://127.0.0.1:9/health"],  # nothing listens on the discard port
        "deadline_s": 60,
        "watch": {"script": script, "services": {}, "tails": {"engine-x": "echo boom"}},
    }
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, str(HEALTH_CHECK), json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=90,
    )
    print(f"the pid change was noticed after {time.monotonic() - started:.1f} s")
    report = json.loads(out.stdout)
    assert out.returncode == 1
    assert report["failed"]["engine-x"]["pid"] == "101"
    assert report["failed"]["engine-x"]["log"] == ["boom"]
