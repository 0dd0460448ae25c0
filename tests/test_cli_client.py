"""The `finetune` client commands as a user runs them: real subprocesses (`python -m app.cli …`) against
the live embedded stack (a real API and Celery worker). One LoRA job is trained and followed through a
relay that cuts the event stream once; a second job is paused, resumed and cancelled under `follow`; a
tiny chat model is trained for `chat`."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES
from tests.support import task_data
from tests.support.live import REPO

BLOCKS = set("▁▂▃▄▅▆▇█")
LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d ")


def finetune(*args: str, env: dict, stdin: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=REPO, env=env, input=stdin,
                          capture_output=True, text=True, timeout=timeout)


def ok(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, (done.returncode, done.stdout[-3000:], done.stderr[-3000:])
    return done.stdout


class Relay:
    """A TCP relay to the service that keeps what each connection sent (request lines and headers) and,
    with ``cut_first_stream``, cuts the first event stream right after its first event, both ways, as a
    dropped network link would."""

    def __init__(self, upstream_port: int, cut_first_stream: bool = False):
        self.upstream_port, self.cut_first_stream = upstream_port, cut_first_stream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.sent: list[bytearray] = []  # per connection, what the client sent
        self.cut = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def __enter__(self) -> Relay:
        return self

    def __exit__(self, *exc) -> None:
        self.listener.close()

    def requests(self, marker: bytes) -> list[bytes]:
        """The heads of the body-less requests containing ``marker``, in order (a kept-alive connection
        carries several)."""
        return [head for sent in self.sent for head in bytes(sent).split(b"\r\n\r\n") if marker in head]

    def count(self, request_line: bytes) -> int:
        return sum(bytes(sent).count(request_line) for sent in self.sent)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            sent = bytearray()
            self.sent.append(sent)
            threading.Thread(target=self._pump, args=(client, upstream, sent, None), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, None, sent), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, record: bytearray | None,
              request: bytearray | None) -> None:
        try:
            while data := source.recv(65536):
                if record is not None:
                    record.extend(data)
                target.sendall(data)
                first_event = b"\nid: " in data or data.startswith(b"id: ")
                if (request is not None and self.cut_first_stream and not self.cut.is_set()
                        and b"stream=true" in request and first_event):
                    self.cut.set()
                    break
        except OSError:
            pass
        for end in (source, target):
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            end.close()


@pytest.fixture(scope="module")
def env(embedded_stack, tmp_path_factory) -> dict:
    # Wide, so that event lines are not wrapped; FT_DATA_DIR empty, so no key file is read by accident.
    return {**os.environ, "FT_URL": embedded_stack.url, "FT_API_KEY": embedded_stack.key, "COLUMNS": "200",
            "FT_DATA_DIR": str(tmp_path_factory.mktemp("cli-data"))}


@pytest.fixture(scope="module")
def trained(env, embedded_stack) -> dict:
    """A LoRA job created with -p and a local training file (uploaded first), followed to its end
    through a relay that cuts the stream after its first event."""
    valid = json.loads(ok(finetune("files", "upload", str(EXAMPLES / "sentiment_validation.csv"), "--json",
                                   env=env)))["id"]
    created = finetune("jobs", "create", "-m", "tiny/bert", "-f", str(EXAMPLES / "sentiment.csv"), "-v", valid,
                       "--lora", "--epochs", "2", "-p", "learning_rate=2e-3", "-p", "batch_size=32",
                       "-p", 'adapter={"r": 8}', "--suffix", "cli", "--json", env=env)
    job = json.loads(ok(created))
    with Relay(embedded_stack.port, cut_first_stream=True) as relay:
        followed = finetune("jobs", "follow", job["id"], "--url", relay.url, env=env, timeout=600)
        stream_requests = relay.requests(b"stream=true")
        was_cut = relay.cut.is_set()
    return {"job": job, "created": created, "followed": followed, "stream_requests": stream_requests,
            "was_cut": was_cut, "valid": valid}


def test_upload_prints_the_report_and_json_parses(env):
    shown = ok(finetune("files", "upload", str(EXAMPLES / "sentiment.csv"), env=env))
    assert re.search(r"rows\s+200\b", shown) and re.search(r"columns\s+text, label", shown)
    assert re.search(r"detected task\s+text-classification", shown)
    raw = json.loads(ok(finetune("files", "upload", str(EXAMPLES / "sentiment.csv"), "--json", env=env)))
    assert (raw["status"], raw["rows"], raw["columns"]) == ("processed", 200, ["text", "label"])
    got = json.loads(ok(finetune("files", "get", raw["id"], "--json", env=env)))
    assert got == raw
    assert raw["id"] in ok(finetune("files", "list", "--limit", "5", env=env))


def test_a_bad_file_shows_its_problems_with_line_and_column_and_exits_1(env, tmp_path):
    bad = tmp_path / "dupe.csv"
    bad.write_text("text,label,text\na,x,b\n")
    done = finetune("files", "upload", str(bad), env=env)
    assert done.returncode == 1, (done.stdout, done.stderr)
    row = next(line for line in done.stdout.splitlines() if "appears twice" in line)
    assert re.search(r"error\s*│\s*1\s*│\s*text\s*│\s*Column name 'text' appears twice", row), done.stdout
    assert "no job can use it" in done.stderr
    # A local file with errors named in `jobs create` stops there: no job.
    refused = finetune("jobs", "create", "-m", "tiny/bert", "-f", str(bad), env=env)
    assert refused.returncode == 1 and "appears twice" in refused.stdout


def test_jobs_create_sends_params_and_lora(trained):
    job = trained["job"]
    assert "Uploaded" in trained["created"].stderr and job["training_file"].startswith("file-")
    assert job["validation_file"] == trained["valid"]
    hyper = job["hyperparameters"]
    assert (hyper["learning_rate"], hyper["batch_size"], hyper["n_epochs"]) == (2e-3, 32, 2)
    assert hyper["adapter"]["type"] == "lora" and hyper["adapter"]["r"] == 8


def test_follow_survives_a_dropped_stream_and_exits_0_on_success(trained, embedded_stack):
    followed = trained["followed"]
    assert followed.returncode == 0, (followed.stdout[-3000:], followed.stderr[-3000:])
    # The stream was cut once, and the second request asked for what came after the last event seen.
    assert trained["was_cut"], "the relay never saw an event: did the job finish before follow started?"
    assert len(trained["stream_requests"]) >= 2, trained["stream_requests"]
    resumed = re.search(rb"(?i)last-event-id: (\d+)", trained["stream_requests"][1])
    assert resumed and int(resumed.group(1)) >= 1, trained["stream_requests"][1]
    assert "Connection lost" in followed.stderr and "Reconnected" in followed.stderr
    out = followed.stdout
    # Each event once, however the stream was cut and reopened.
    # Two events may read alike (equal evaluations in the same second), so each printed line is counted
    # against the events the API holds with that text, not required to be unique.
    events = [line for line in out.splitlines() if LOG_LINE.match(line)]
    held = [time.strftime("%H:%M:%S", time.localtime(e["created_at"])) + " " + e["message"]
            for e in embedded_stack.events(trained["job"]["id"])]
    for line in set(events):
        assert events.count(line) <= sum(h.startswith(line) for h in held), (line, events)
    assert sum("Training finished" in e for e in events) == 1, events
    # The final frame: a full bar with step and throughput, the last loss and its sparkline, the evaluation.
    assert re.search(r"succeeded .*100% step (\d+)/\1 .*samples/s", out), out
    loss = re.search(r"loss (\d+\.\d+)\s+(\S+)\s+last \d+ of \d+ logged", out)
    assert loss and set(loss.group(2)) <= BLOCKS, out
    assert re.search(r"eval .*accuracy=", out)
    assert f"✓ succeeded: model ft:tiny/bert:cli:{trained['job']['id'][-8:]}" in out


def test_following_a_finished_job_answers_at_once(trained, env):
    started = time.monotonic()
    done = finetune("jobs", "follow", trained["job"]["id"], env=env)
    assert done.returncode == 0 and time.monotonic() - started < 30
    assert "✓ succeeded" in done.stdout and re.search(r"loss \d+\.\d+\s+[▁▂▃▄▅▆▇█]+", done.stdout), done.stdout
    lines = [json.loads(line) for line in ok(finetune("jobs", "follow", trained["job"]["id"], "--json", env=env))
             .splitlines()]
    assert [e["seq"] for e in lines] == list(range(1, len(lines) + 1))  # every event, in order
    assert lines[-1]["data"]["status"] == "succeeded"
    listed = ok(finetune("jobs", "list", env=env))
    assert trained["job"]["id"] in listed
    assert re.search(r"status\s+succeeded", ok(finetune("jobs", "get", trained["job"]["id"], env=env)))


def test_pause_resume_ctrl_c_detaches_and_a_cancel_makes_follow_exit_2(trained, env, embedded_stack):
    job = json.loads(ok(finetune("jobs", "create", "-m", "tiny/bert", "-f", trained["job"]["training_file"],
                                 "-p", "n_epochs=100", "-p", "batch_size=4", "--json", env=env)))
    # Paused at once while queued; a running job saves a checkpoint first.
    paused = finetune("jobs", "pause", job["id"], env=env)
    assert paused.returncode == 0, (paused.stderr, embedded_stack.events(job["id"]), embedded_stack.log()[-4000:])
    assert re.match(rf"{job['id']}: (paused|running)", paused.stdout)
    embedded_stack.wait_for_job(job["id"], timeout=180, until=lambda j: j["status"] == "paused")
    assert ok(finetune("jobs", "resume", job["id"], env=env)).startswith(f"{job['id']}: queued")

    def follow() -> subprocess.Popen:
        # Started with SIGINT ignored, as a parent that ignores it passes it on (this test runner did at
        # times, and Ctrl-C then went unheard): `follow` must still detach. PYTHONFAULTHANDLER: if it
        # hangs, SIGABRT makes it print where every thread is.
        process = subprocess.Popen([sys.executable, "-m", "app.cli", "jobs", "follow", job["id"]], cwd=REPO,
                                   env={**env, "PYTHONFAULTHANDLER": "1"}, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True,
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
        assert process.stdout.readline().startswith(f"Job {job['id']}")  # attached
        return process

    # Ctrl-C while following detaches: exit 130, how to follow again, and the job goes on. It is pressed
    # once an event has been shown (the stream is being read), not at a fixed time after start.
    detached = follow()
    try:
        shown: list[str] = []
        reader = threading.Thread(target=lambda: shown.append(detached.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout=120)
        assert shown and shown[0].strip(), "no event was shown within 120 s of following"
        detached.send_signal(signal.SIGINT)
        try:
            _, err = detached.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            detached.send_signal(signal.SIGABRT)
            out, err = detached.communicate(timeout=30)
            raise AssertionError(f"Ctrl-C did not detach in 60 s; where it was:\n{err}\n{out[-2000:]}") from None
    finally:
        detached.kill()
    assert detached.returncode == 130 and f"finetune jobs follow {job['id']}" in err, err
    assert json.loads(ok(finetune("jobs", "get", job["id"], "--json", env=env)))["status"] in {"queued", "running"}

    following = follow()
    try:
        ok(finetune("jobs", "cancel", job["id"], env=env))
        out, err = following.communicate(timeout=180)
    finally:
        following.kill()
    assert following.returncode == 2, (out, err)
    assert "■ cancelled" in out


def test_predict_one_text_and_a_file_in_batches(trained, env, embedded_stack, tmp_path):
    model = embedded_stack.wait_for_job(trained["job"]["id"], timeout=5)["fine_tuned_model"]
    shown = ok(finetune("predict", model, "The soundtrack was superb.", env=env))
    assert re.search(r"positive\s*│\s*0\.\d{4}", shown) and re.search(r"negative\s*│\s*0\.\d{4}", shown)
    raw = json.loads(ok(finetune("predict", model, "Superb!", "-p", "top_k=1", "--json", env=env)))
    assert len(raw) == 1 and len(raw[0]) == 1 and raw[0][0]["label"] in {"positive", "negative"}

    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text('"great"\n{"text": "awful"}\n\n"fine"\n"dull"\n"superb"\n')
    with Relay(embedded_stack.port) as relay:
        out = ok(finetune("predict", model, "--file", str(inputs), "--batch-size", "2", "--url", relay.url, env=env))
        requests = relay.count(b"POST /v1/models/")
    answers = [json.loads(line) for line in out.splitlines()]
    assert len(answers) == 5 and all({d["label"] for d in a} == {"positive", "negative"} for a in answers)
    assert requests == 3  # 5 inputs, at most 2 per request

    inputs.write_text('"great"\nnot json\n')
    refused = finetune("predict", model, "--file", str(inputs), env=env)
    assert refused.returncode != 0 and "line 2 is not JSON" in refused.stderr


def test_models_list_get_download(trained, env, embedded_stack, tmp_path):
    model = embedded_stack.wait_for_job(trained["job"]["id"], timeout=5)["fine_tuned_model"]
    listed = ok(finetune("models", "list", env=env))
    assert model in listed and "tiny/bert" in listed
    got = json.loads(ok(finetune("models", "get", model, "--json", env=env)))
    assert (got["kind"], got["job_id"], got["task"]) == ("fine-tuned", trained["job"]["id"], "text-classification")
    said = ok(finetune("models", "download", model, "-o", str(tmp_path), env=env))
    archive = tmp_path / (model.replace("/", "_").replace(":", "_") + ".tar.gz")
    assert str(archive) in said and not list(tmp_path.glob("*.part"))
    with tarfile.open(archive) as tar:
        names = [Path(n).name for n in tar.getnames()]
    assert "adapter_config.json" in names and "finetune_service.json" in names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pkl"))]


def test_errors_print_the_api_message_and_exit_non_zero(env, embedded_stack, tmp_path):
    bad_key = finetune("jobs", "list", env={**env, "FT_API_KEY": "sk-ft-nope"})
    assert bad_key.returncode == 3 and "Invalid API key" in bad_key.stderr and "Traceback" not in bad_key.stderr
    unknown = finetune("jobs", "get", "ftjob-doesnotexist", env=env)
    assert unknown.returncode == 3 and "HTTP 404" in unknown.stderr and "ftjob-doesnotexist" in unknown.stderr
    follow_unknown = finetune("jobs", "follow", "ftjob-doesnotexist", env=env)
    assert follow_unknown.returncode == 3 and "HTTP 404" in follow_unknown.stderr
    down = finetune("files", "list", "--url", "http://127.0.0.1:9", env=env)
    assert down.returncode == 4 and "Cannot reach the service" in down.stderr
    # No key given: the one `make run` wrote to data/api_key, else the service's 401 and how to give one.
    no_key = {k: v for k, v in env.items() if k != "FT_API_KEY"} | {"FT_DATA_DIR": str(tmp_path)}
    missing = finetune("files", "list", env=no_key)
    assert missing.returncode == 3 and "Missing API key" in missing.stderr and "FT_API_KEY" in missing.stderr
    (tmp_path / "api_key").write_text(embedded_stack.key + "\n")
    ok(finetune("files", "list", env=no_key))


@pytest.fixture(scope="module")
def chat_model(env, tmp_path_factory) -> str:
    """A tiny GPT-2 chat model, created and followed with `jobs create --follow --json` (JSON Lines)."""
    folder = tmp_path_factory.mktemp("chat")
    (folder / "chat.jsonl").write_bytes(task_data.jsonl(task_data.chat(24)))
    (folder / "chatml.jinja").write_text(task_data.CHATML)
    create = ("jobs", "create", "-m", "tiny/gpt2", "-f", str(folder / "chat.jsonl"), "--chat-template",
              str(folder / "chatml.jinja"), "--epochs", "1", "-p", "batch_size=8", "--follow", "--json")
    done = finetune(*create, env=env, timeout=600)
    if done.returncode == 3 and "chat template took longer" in done.stderr:
        # The API's first template rendering starts its sandboxed helper, and that start counts against the
        # rendering's time limit (1 s): on a loaded machine it can miss it. The helper is warm now.
        done = finetune(*create, env=env, timeout=600)
    out = ok(done)
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines[0]["object"] == "fine_tuning.job" and lines[-1]["data"]["status"] == "succeeded"
    return f"ft:tiny/gpt2::{lines[0]['id'][-8:]}"


def test_chat_streams_answers_and_keeps_the_conversation(chat_model, env, trained, embedded_stack):
    transcript = "the movie was great\nand the plot?\n/reset\nthe movie was great\n/exit\nnever sent\n"
    out = ok(finetune("chat", chat_model, "--max-tokens", "4", "--json", env=env, stdin=transcript))
    chunks = [json.loads(line) for line in out.splitlines()]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    usage = [c["usage"] for c in chunks if c.get("usage")]
    assert len(usage) == 3  # three turns; nothing after /exit
    first, second, after_reset = usage
    # The second turn is sent with the whole conversation; /reset starts over.
    assert second["prompt_tokens"] > first["prompt_tokens"] + first["completion_tokens"]
    assert after_reset["prompt_tokens"] == first["prompt_tokens"]
    # For people: the tokens as they come, then a new line (greedy: the same tokens as the chunks say).
    chunks = [json.loads(line) for line in ok(finetune("chat", chat_model, "--max-tokens", "4", "--json", env=env,
                                                       stdin="hello\n")).splitlines()]
    pieces = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert ok(finetune("chat", chat_model, "--max-tokens", "4", env=env, stdin="hello\n")) == pieces + "\n"
    # A model that cannot chat: the API's message, exit 3.
    classifier = embedded_stack.wait_for_job(trained["job"]["id"], timeout=5)["fine_tuned_model"]
    refused = finetune("chat", classifier, env=env, stdin="hello\n")
    assert refused.returncode == 3 and "model_not_generative" in refused.stderr
