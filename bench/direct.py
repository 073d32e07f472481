"""A worker with no agent in front of it, for bench/agent.sh: one long-lived `rbee-worker` in its
protocol mode (as the agent runs it), driven over its stdin/stdout. Each line read on stdin runs
one generation and prints the decode tokens/s the client side of the pipe observed (first token
frame to last), so relayed and direct runs can be interleaved in one benchmark.
Usage: direct.py WORKER MODEL PROTOCOL_VERSION PROMPT TOKENS"""
import json, subprocess, sys, time

worker, model, version, prompt, tokens = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
w = subprocess.Popen([worker, "--model", model, "--device", "cpu", "--heartbeat-ms", "2000", "--queue", "8"],
                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1)


def frame(msg):
    w.stdin.write(json.dumps(msg) + "\n")
    w.stdin.flush()


def generate(rid, text, n):
    frame({"type": "generate", "id": rid, "prompt": text,
           "params": {"temperature": 0, "max_tokens": n, "ignore_eos": True}})
    first = last = None
    count = 0
    while True:
        m = json.loads(w.stdout.readline())
        if m.get("id") != rid:
            continue
        if m["type"] == "token":
            last = time.perf_counter()
            first = first or last
            count += 1
        elif m["type"] == "done":
            return (count - 1) / (last - first)
        elif m["type"] == "error":
            sys.exit(f"direct worker: {m['message']}")


frame({"type": "hello", "protocol_version": version})
while json.loads(w.stdout.readline())["type"] != "ready":
    pass
generate(1, "warm up", 8)
rid = 1
for _ in sys.stdin:
    rid += 1
    print(f"{generate(rid, prompt, tokens):.3f}", flush=True)
w.stdin.close()
w.wait()
