"""bench.locust_run: a failed start is one line (exit 2), never a traceback; the API
key it sends by default, and where it sends it."""

import socket
import threading

import pytest

from bench import locust_run
from engine import auth


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: nothing listens


def one_line(out: str) -> str:
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("python -m bench.locust_run:"), out
    return lines[0]


def test_an_engine_not_there_is_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv(auth.KEY_ENV, "not-a-key")
    code = locust_run.main(["--host", f"http://127.0.0.1:{closed_port()}", "--population", "1",
                            "--run-time", "1s", "--csv", str(tmp_path / "locust")])
    out = capsys.readouterr()
    assert code == 2 and "Traceback" not in out.out + out.err
    assert "refused" in one_line(out.out).lower()


def test_a_server_that_is_not_http_is_one_line(capsys, tmp_path, monkeypatch):
    """Pointed at NATS's or PostgreSQL's port by mistake: http.client's own errors."""
    monkeypatch.setenv(auth.KEY_ENV, "not-a-key")
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def answer_garbage():
        conn, _ = srv.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"INFO {}\r\n")

    t = threading.Thread(target=answer_garbage, daemon=True)
    t.start()
    try:
        code = locust_run.main(["--host", f"http://127.0.0.1:{srv.getsockname()[1]}", "--population", "1",
                                "--run-time", "1s", "--csv", str(tmp_path / "locust")])
    finally:
        t.join(5)
        srv.close()
    out = capsys.readouterr()
    assert code == 2 and "Traceback" not in out.out + out.err
    one_line(out.out)


def test_a_bad_run_time_is_one_line(capsys, tmp_path):
    code = locust_run.main(["--no-seed", "--run-time", "ten minutes", "--csv", str(tmp_path / "locust")])
    assert code == 2 and "bad run time" in one_line(capsys.readouterr().out)


@pytest.mark.parametrize(("url", "goes"), [
    ("http://127.0.0.1:8080", True), ("http://localhost:8080", True), ("http://[::1]:8080", True),
    ("https://tidings.example.com", True), ("http://tidings.example.com", False), ("http://10.0.0.5:8080", False),
])
def test_a_key_goes_in_clear_text_only_to_a_loopback_address(url, goes):
    assert auth.key_goes_to(url) is goes


def test_the_default_key_is_the_admin_key_a_first_start_wrote_for_a_loopback_host(tmp_path, monkeypatch):
    monkeypatch.delenv(auth.KEY_ENV, raising=False)
    monkeypatch.setenv("TIDINGS_ENGINE_HOME", str(tmp_path))
    (tmp_path / auth.ADMIN_FILE).write_text("tk_admin\n")
    assert locust_run.default_key("http://127.0.0.1:8080") == "tk_admin"
    assert locust_run.default_key("http://tidings.example.com") is None  # never in clear text over a network
    monkeypatch.setenv(auth.KEY_ENV, "tk_given")
    assert locust_run.default_key("http://tidings.example.com") == "tk_given"  # the caller's own choice


def test_a_programmatic_run_sends_no_key_unless_given(tmp_path, monkeypatch):
    """``run(api_key=None)`` (bench auth's round without auth) must not pick up a key file."""
    monkeypatch.delenv(auth.KEY_ENV, raising=False)
    monkeypatch.setenv("TIDINGS_ENGINE_HOME", str(tmp_path))
    (tmp_path / auth.ADMIN_FILE).write_text("tk_admin\n")
    sent = {}

    def seed(host, population, api_key=None):
        sent["key"] = api_key
        raise RuntimeError("stop here")

    monkeypatch.setattr(locust_run, "seed", seed)
    with pytest.raises(RuntimeError, match="stop here"):
        locust_run.run("http://127.0.0.1:1", 1, 1, "1s", tmp_path / "locust")
    assert sent == {"key": None}
