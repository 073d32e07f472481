"""rbee side of bench/throughput.sh: drives a real rbee-worker over its stdio protocol.

Modes (one JSON line on stdout each):
  decode WORKER MODEL THREADS STREAMS TOKENS   STREAMS requests at once (short prompts), TOKENS
                                               each, greedy, ignore_eos: aggregate decode tok/s
                                               from the moment every stream has its first token
  ttft WORKER MODEL THREADS PROMPT_FILE        3 streams decoding, then a long prompt: its TTFT
                                               and the 3 streams' tok/s meanwhile
  reuse WORKER MODEL THREADS PROMPT_FILE       a conversation (the file) answered, then its next
                                               turn: TTFT on the same worker (prefix cached) and
                                               on a fresh one (nothing cached)
"""
import json
import subprocess
import sys
import time

PROMPTS = [
    "The history of the printing press",
    "Once upon a time, in a small village,",
    "My favourite recipe for bread is",
    "Q: What is the capital of France?\nA:",
]


class Worker:
    def __init__(self, worker, model, threads, parallel=8):
        self.p = subprocess.Popen(
            [worker, "--model", model, "--threads", str(threads), "--parallel", str(parallel),
             "--queue", "16"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        for line in self.p.stdout:
            if '"ready"' in line:
                return
        raise SystemExit("worker never became ready")

    def generate(self, rid, prompt, tokens, ignore_eos=True):
        params = {"temperature": 0.0, "max_tokens": tokens, "ignore_eos": ignore_eos}
        msg = {"type": "generate", "id": rid, "prompt": prompt, "params": params}
        self.p.stdin.write(json.dumps(msg) + "\n")
        self.p.stdin.flush()

    def frames(self):
        for line in self.p.stdout:
            yield time.perf_counter(), json.loads(line)

    def close(self):
        self.p.stdin.close()
        self.p.wait()


def decode_mode(worker, model, threads, streams, tokens):
    w = Worker(worker, model, threads, parallel=streams)
    # Warm up once (dense weights made, allocator warmed).
    w.generate(0, PROMPTS[0], 4)
    for _, m in w.frames():
        if m["type"] in ("done", "error"):
            break
    for s in range(streams):
        w.generate(1 + s, PROMPTS[s % 4], tokens)
    first, done, usage = {}, {}, {}
    for t, m in w.frames():
        rid = m.get("id")
        if m["type"] == "token" and rid not in first:
            first[rid] = t
        if m["type"] in ("done", "error"):
            done[rid] = t
            usage[rid] = m.get("usage", {})
            if len(done) == streams:
                break
    w.close()
    start = max(first.values())
    end = max(done.values())
    # Tokens produced after every stream had started.
    gen = sum(u.get("generated_tokens", 0) for u in usage.values())
    print(json.dumps({"engine": "rbee", "streams": streams,
                      "aggregate_tps": (gen - streams) / (end - start) if end > start else 0.0,
                      "per_stream_tps": [round(u.get("decode_tokens_per_s", 0), 1)
                                         for u in usage.values()]}))


def ttft_mode(worker, model, threads, prompt_file):
    w = Worker(worker, model, threads, parallel=4)
    w.generate(0, PROMPTS[0], 4)
    for _, m in w.frames():
        if m["type"] in ("done", "error"):
            break
    for s in range(3):
        w.generate(1 + s, PROMPTS[s], 100000)
    seen, counts, t0, long_first, ttft = set(), {1: 0, 2: 0, 3: 0}, None, None, None
    for t, m in w.frames():
        rid = m.get("id")
        if m["type"] == "token" and rid in counts:
            counts[rid] += 1
            seen.add(rid)
            if t0 is None and len(seen) == 3 and min(counts.values()) >= 8:
                w.generate(9, open(prompt_file).read(), 1)
                t0, counts = t, {1: 0, 2: 0, 3: 0}
        if rid == 9 and m["type"] in ("token", "done") and long_first is None:
            long_first = t
            during = dict(counts)
        if rid == 9 and m["type"] == "done":
            ttft = m["usage"]["time_to_first_token_ms"]
            prompt_tokens = m["usage"]["prompt_tokens"]
            break
    for rid in (1, 2, 3):
        w.p.stdin.write(json.dumps({"type": "cancel", "id": rid}) + "\n")
    w.p.stdin.flush()
    w.p.kill()
    dt = long_first - t0
    print(json.dumps({"engine": "rbee", "prompt_tokens": prompt_tokens, "ttft_ms": ttft,
                      "client_ttft_ms": dt * 1e3,
                      "others_tps": sum(during.values()) / 3 / dt}))


def turn(w, rid, prompt, tokens):
    w.generate(rid, prompt, tokens, ignore_eos=False)
    text, usage = "", None
    for _, m in w.frames():
        if m["type"] == "token":
            text += m["text"]
        if m["type"] in ("done", "error"):
            usage = m.get("usage")
            break
    return text, usage


def reuse_mode(worker, model, threads, prompt_file):
    history = open(prompt_file).read()
    w = Worker(worker, model, threads, parallel=4)
    answer, first = turn(w, 1, history, 48)
    follow = (history + answer + "<|im_end|>\n<|im_start|>user\n"
              "Thank you. Can you sum that up in one sentence?<|im_end|>\n<|im_start|>assistant\n")
    _, warm = turn(w, 2, follow, 16)
    w.close()
    cold_w = Worker(worker, model, threads, parallel=4)
    _, cold = turn(cold_w, 2, follow, 16)
    cold_w.close()
    print(json.dumps({"engine": "rbee", "history_tokens": first["prompt_tokens"],
                      "follow_up_tokens": warm["prompt_tokens"],
                      "first_turn_ttft_ms": first["time_to_first_token_ms"],
                      "reuse_ttft_ms": warm["time_to_first_token_ms"],
                      "no_reuse_ttft_ms": cold["time_to_first_token_ms"]}))


if __name__ == "__main__":
    mode, a = sys.argv[1], sys.argv[2:]
    if mode == "decode":
        decode_mode(a[0], a[1], int(a[2]), int(a[3]), int(a[4]))
    elif mode == "ttft":
        ttft_mode(a[0], a[1], int(a[2]), a[3])
    else:
        reuse_mode(a[0], a[1], int(a[2]), a[3])
