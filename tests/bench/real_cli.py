#!/usr/bin/env python3
"""make bench, real-CLI phase: the pinned real Claude Code CLI through the whole path (webhook →
gateway → turn unit → picortex-run → claude → the Messages API stand-in at 198.51.100.1), one
chat, sequential turns. real_cli_turn_overhead_ms is, per warm turn, the time from sending the
webhook to the reply reaching the simulator, minus the time the stand-in API spent answering
that turn's requests: what picortex plus the CLI itself cost on top of the model.

    real_cli.py MACHINE_ROOT OUT_JSON [TURNS]     (MACHINE_ROOT: /proc/<pid>/root of a booted,
                                                   configured machine with picortexd enabled)
"""
import http.client
import json
import socket
import statistics
import sys
import time

root, out_json = sys.argv[1], sys.argv[2]
turns = int(sys.argv[3]) if len(sys.argv) > 3 else 12
OWNER = "+15550002000"


class Unix(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("sim", timeout=60)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


def control(method, url, body=None):
    c = Unix(root + "/run/linq-sim/control.sock")
    c.request(method, url, body=json.dumps(body) if body is not None else None,
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read()
    c.close()
    if r.status >= 300:
        raise SystemExit(f"real_cli.py: {method} {url} -> {r.status}: {data[:300]!r}")
    return json.loads(data) if data else None


def api_records():
    try:
        with open(root + "/run/anthropic-standin/requests.jsonl") as f:
            return [json.loads(l) for l in f if l.strip()]
    except FileNotFoundError:
        return []


samples, chat = [], None
for i in range(turns):
    before = len(api_records())
    n_sent = len(control("GET", f"/control/sent?chat_id={chat}")) if chat else 0
    t0 = time.monotonic()
    body = {"from": OWNER, "text": f"bench turn {i}"}
    if chat:
        body["chat_id"] = chat
    r = control("POST", "/control/inbound", body)
    chat = r["chat_id"]
    deadline = t0 + 120
    # The simulator holds the request until the reply is there (no polling beside the turn).
    while len(control("GET", f"/control/sent?chat_id={chat}&more_than={n_sent}&wait_ms=50000")) <= n_sent:
        if time.monotonic() > deadline:
            raise SystemExit(f"real_cli.py: no reply to turn {i} within 120 s")
    wall_ms = (time.monotonic() - t0) * 1000
    recs = api_records()[before:]
    api_ms = sum(r.get("spent_ms", 0) for r in recs)
    if i >= 2:  # the first turns provision the chat and warm its spare unit
        samples.append(wall_ms - api_ms)
    print(f"real-CLI turn {i}: {wall_ms:.0f} ms webhook→reply, {api_ms:.1f} ms in the API "
          f"({len(recs)} requests)", file=sys.stderr)

p50 = statistics.median(samples)
p90 = sorted(samples)[max(0, int(len(samples) * 0.9) - 1)]
doc = json.load(open(out_json))
for name, v, what in (
    ("real_cli_turn_overhead_ms", p50, "warm turn with the real CLI (pinned): webhook sent → reply at the simulator, minus the stand-in API's time, p50"),
    ("real_cli_turn_overhead_p90_ms", p90, "same, p90"),
):
    doc["metrics"][name] = {"name": name, "value": round(v, 1), "unit": "ms", "target": None, "met": None, "what": what}
    print(f"BENCH {name} {round(v, 1)} ms")
doc.setdefault("details", {})["real_cli"] = {"samples_ms": [round(s, 1) for s in samples], "turns": turns}
json.dump(doc, open(out_json, "w"), indent=2)
