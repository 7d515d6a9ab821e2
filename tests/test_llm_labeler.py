"""OpenAICompatLabeler against a small fake OpenAI-compatible server on loopback."""

import http.server
import json
import threading

import pytest

from mfjax.evaluation import RuleLabeler
from mfjax.evaluation.llm_labeler import LabelerError, OpenAICompatLabeler


class _Fake(http.server.BaseHTTPRequestHandler):
  """Answers chat completions with RuleLabeler's labels; misbehaves on request."""

  state = {"requests": 0, "fail_first": 0, "bad_category": False, "batches": []}

  def log_message(self, *args):
    pass

  def do_POST(self):
    s = _Fake.state
    s["requests"] += 1
    body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
    assert self.path == "/v1/chat/completions" and body["model"] == "fake"
    if s["fail_first"] > 0:
      s["fail_first"] -= 1
      self.send_response(503)
      self.end_headers()
      return
    texts = [line.split(". ", 1)[1] for line in body["messages"][1]["content"].split("\n")]
    s["batches"].append(len(texts))
    rule = RuleLabeler()
    rows = []
    for i, t in enumerate(texts):
      lab = rule.label_one(t)
      rows.append({"i": i, "belief": "maybe" if s["bad_category"] else lab["belief"],
                   "sentiment": lab["sentiment"], "intent": lab["intent"]})
    out = json.dumps({"choices": [{"message": {"content": json.dumps({"labels": rows}, ensure_ascii=False)}}]})
    self.send_response(200)
    self.send_header("Content-Type", "application/json")
    self.end_headers()
    self.wfile.write(out.encode())


@pytest.fixture()
def server():
  _Fake.state.update(requests=0, fail_first=0, bad_category=False, batches=[])
  srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Fake)
  thread = threading.Thread(target=srv.serve_forever, daemon=True)
  thread.start()
  yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
  srv.shutdown()
  srv.server_close()


TEXTS = ["真的假的？[怒]", "", "扩散一下[赞]", "说得对", "转发微博", "是谣言吧，有人知道吗", "心疼[泪]"] * 3 + \
    [f"第{i}条评论" for i in range(25)]


def test_labels_batches_and_caches_on_disk(server, tmp_path):
  lab = OpenAICompatLabeler(server, "fake", batch_size=10, cache_dir=str(tmp_path), backoff=0.01)
  got = lab.label(TEXTS)
  assert got == RuleLabeler().label(TEXTS)
  unique_comments = 5 + 25  # shares are labelled locally; duplicates asked once
  assert _Fake.state["batches"] == [10, 10, 10] and sum(_Fake.state["batches"]) == unique_comments
  lab.label(TEXTS)
  again = OpenAICompatLabeler(server, "fake", cache_dir=str(tmp_path))
  assert again.label(TEXTS) == got
  assert _Fake.state["requests"] == 3 and again.requests == 0


def test_retries_server_errors_then_succeeds(server):
  _Fake.state["fail_first"] = 2
  lab = OpenAICompatLabeler(server, "fake", backoff=0.01)
  assert lab.label(["真的吗？"])["belief"] == ["doubt"]
  assert lab.requests == 3


def test_malformed_answers_are_retried_then_reported(server):
  _Fake.state["bad_category"] = True
  lab = OpenAICompatLabeler(server, "fake", max_retries=2, backoff=0.01)
  with pytest.raises(LabelerError, match=r"belief='maybe' is not one of \('believe', 'doubt'\)"):
    lab.label(["说得对"])
  assert lab.requests == 3


def test_unreachable_endpoint_is_a_clear_error():
  lab = OpenAICompatLabeler("http://127.0.0.1:9/v1", "fake", max_retries=1, backoff=0.01, timeout=2)
  with pytest.raises(LabelerError, match=r"gave up .*\(connection error: .*refused"):
    lab.label(["说得对"])
