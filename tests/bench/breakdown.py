#!/usr/bin/env python3
"""Where a warm turn's time goes: joins the measured turns of build/bench.json (simulator clock:
webhook accepted, reply received) with the machine's journal (journalctl -o json), turn by turn,
and prints the median and p90 of each stage (also written back into BENCH_JSON as "breakdown").
Same machine, same CLOCK_REALTIME, so the clocks agree.

    breakdown.py BENCH_JSON JOURNAL_JSON [--phase turns|cold]
"""
import json
import re
import statistics
import sys


def main():
    bench_path, journal_path = sys.argv[1], sys.argv[2]
    phases = [a.split("=", 1)[1] for a in sys.argv[3:] if a.startswith("--phase=")] or ["turns", "turns_back_to_back", "cold"]
    bench = json.load(open(bench_path))
    turn_of_event = {}
    ev = {}  # turn id -> {stage: us}

    def put(turn, stage, us, first=True):
        d = ev.setdefault(turn, {})
        if not first or stage not in d:
            d[stage] = us

    unit_re = re.compile(r"picortex-turn-([0-9a-f]{32})\.service")
    typing_re = re.compile(r"method=POST path=/api/partner/v3/chats/([0-9a-f-]+)/typing status=2")
    typing = {}  # chat id -> [us, ...]
    spare_of = {}  # spare unit id -> the turn it ran (picortex-run logs the unit's own id)
    for line in open(journal_path, errors="replace"):
        try:
            e = json.loads(line)
        except ValueError:
            continue
        msg = e.get("MESSAGE")
        if not isinstance(msg, str):
            continue
        us = int(e.get("__REALTIME_TIMESTAMP", 0))
        ident = e.get("SYSLOG_IDENTIFIER")
        turn = e.get("PICORTEX_TURN")
        unit_turn = None
        if isinstance(turn, list):
            # The spare handoff line carries the turn's id and its spare unit's id.
            m = unit_re.search(e.get("PICORTEX_UNIT", "") or "")
            unit_turn = m.group(1) if m else None
            turn = next((t for t in turn if t != unit_turn), None)
        if ident == "linq-sim":
            m = typing_re.search(msg)
            if m:
                typing.setdefault(m.group(1), []).append(us)
        elif ident == "picortexd":
            if msg.startswith("message stored; turn queued") and turn:
                turn_of_event[e.get("PICORTEX_EVENT_ID")] = turn
                put(turn, "stored", us)
            elif msg == "chat provisioned" and turn:
                put(turn, "provisioned", us)
            elif msg == "turn started" and turn:
                put(turn, "gw_started", us)
            elif msg == "turn started in a spare unit" and turn:
                put(turn, "handed", us)
                m = unit_re.search(e.get("PICORTEX_UNIT", "") or "")
                if m:
                    spare_of[m.group(1)] = turn
            elif msg == "turn finished" and turn:
                put(turn, "gw_finished", us)
        elif ident == "picortex-provision" and turn:
            if msg.startswith("StartTurn") and e.get("PICORTEX_OUTCOME") == "ok":
                put(turn, "helper_started", us)
        elif ident == "picortex-provision" and msg.startswith("EnsureChat"):
            chat = e.get("PICORTEX_CHAT")
            if chat:
                ev.setdefault("chat:" + chat, {})["ensure_ok"] = us
        elif ident == "picortex-run" and turn:
            if msg == "turn started":
                put(turn, "run_started", us)
            elif msg.startswith("turn finished"):
                put(turn, "run_finished", us)
        elif ident == "systemd":
            m = unit_re.search(e.get("UNIT", "") or "")
            if not m:
                continue
            t = m.group(1)
            if msg.startswith("Starting picortex-turn-"):
                put(t, "sd_starting", us)
            elif msg.startswith("Started picortex-turn-"):
                put(t, "sd_started", us)

    for spare, turn in spare_of.items():
        for k in ("run_started", "run_finished"):
            if k in ev.get(spare, {}):
                put(turn, k, ev[spare][k])

    spare_stages = [
        ("accepted", "webhook 2xx at the simulator"),
        ("handed", "gateway dispatched the turn and wrote its request into the chat's spare unit"),
        ("run_started", "picortex-run (waiting in the spare) read the request: audit entry"),
        ("run_finished", "picortex-run: seed, run the stand-in (zero-time), normalise"),
        ("gw_finished", "result document written; gateway reads it (inotify), records the turn, signals TurnFinished"),
        ("reply", "outbox: reply POSTed to the simulator"),
    ]
    stages = [
        ("accepted", "webhook 2xx at the simulator"),
        ("typing", "gateway dispatched the turn: queue + chat read, status committed, typing request done"),
        ("helper_started", "StartTurn on D-Bus: polkit, user lookup, slice SetUnitProperties, StartTransientUnit"),
        ("sd_starting", "systemd: job run, cgroup + IP-firewall BPF, PrivateTmp dirs, fork ('Starting' logged)"),
        ("sd_started", "forked child: sandbox set-up (mount namespace...), exec picortex-run ('Started')"),
        ("run_started", "picortex-run start-up to its audit entry"),
        ("run_finished", "picortex-run: seed, run the stand-in (zero-time), normalise"),
        ("gw_finished", "result document written; gateway reads it (inotify), records the turn, signals TurnFinished"),
        ("reply", "outbox: reply POSTed to the simulator"),
    ]
    out = {}
    for phase in phases:
        samples = (bench.get("details", {}).get(phase) or {}).get("samples") or []
        rows = []
        for s in samples:
            t = turn_of_event.get(s.get("event_id"))
            if not t or t not in ev:
                continue
            d = dict(ev[t])
            d["accepted"] = s["accepted_ns"] / 1000
            d["reply"] = s["reply_ns"] / 1000
            # The first typing request of the chat after the webhook (sent when the turn starts).
            ty = [u for u in typing.get(s.get("chat_id", ""), []) if d["accepted"] - 2000 <= u <= d["reply"]]
            if ty and "helper_started" in d and min(ty) <= d["helper_started"]:
                d["typing"] = min(ty)
            ens = ev.get("chat:" + s.get("chat_id", ""), {}).get("ensure_ok")
            if phase == "cold" and ens:
                d["ensure_ok"] = ens
            rows.append(d)
        if not rows:
            continue
        groups = [(phase, [r for r in rows if "handed" not in r], stages),
                  (phase + " (in a spare unit)", [r for r in rows if "handed" in r], spare_stages)]
        for name, rows, st in groups:
            if rows:
                out[name.replace(" (in a spare unit)", "_spare")] = report(name, rows, st, phase)
    if out:
        bench["breakdown"] = out
        with open(bench_path, "w") as f:
            json.dump(bench, f, indent=2)


def report(phase, rows, st, kind):
    if kind == "cold" and "handed" not in rows[0]:
        st = [st[0], ("ensure_ok", "EnsureChat returned (useradd, home, registry)")] + st[1:]
    if True:
        print(f"-- {phase}: {len(rows)} turns joined with the journal (ms from the previous step; median / p90)")
        total = []
        steps = []
        for (a, _), (b, what) in zip(st, st[1:]):
            ds = [(r[b] - r[a]) / 1000 for r in rows if a in r and b in r]
            if not ds:
                print(f"   {'?':>7}          {what}")
                continue
            ds.sort()
            p90 = ds[min(len(ds) - 1, int(0.9 * len(ds)))]
            total.append(statistics.median(ds))
            steps.append({"from": a, "to": b, "what": what, "p50_ms": round(statistics.median(ds), 2), "p90_ms": round(p90, 2), "n": len(ds)})
            print(f"   {statistics.median(ds):7.1f} / {p90:6.1f}  {what}")
        ends = [(r["reply"] - r["accepted"]) / 1000 for r in rows]
        print(f"   {statistics.median(ends):7.1f}           end to end (median; the medians above sum to {sum(total):.1f})")
        return {"turns_joined": len(rows), "steps": steps, "end_to_end_p50_ms": round(statistics.median(ends), 2)}


if __name__ == "__main__":
    main()
