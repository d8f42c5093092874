"""bench.locust_run answers a failed start in one line (exit 2), never a traceback."""

import socket

from bench import locust_run


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: nothing listens


def test_an_engine_not_there_is_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("TIDINGS_API_KEY", "not-a-key")
    code = locust_run.main(["--host", f"http://127.0.0.1:{closed_port()}", "--population", "1",
                            "--run-time", "1s", "--csv", str(tmp_path / "locust")])
    out = capsys.readouterr()
    assert code == 2
    assert "Traceback" not in out.out + out.err
    lines = [line for line in out.out.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("python -m bench.locust_run:")
    assert "refused" in lines[0].lower()


def test_a_bad_run_time_is_one_line(capsys, tmp_path):
    code = locust_run.main(["--no-seed", "--run-time", "ten minutes", "--csv", str(tmp_path / "locust")])
    out = capsys.readouterr().out
    assert code == 2 and "bad run time" in out and "Traceback" not in out
