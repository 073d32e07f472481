"""Peak resident memory of a real rbee-worker, for the admission estimate's fixtures
(store/tests/estimate.rs): the worker in protocol mode as the agent runs it (hello, requests,
VmHWM read after every `done`).

Usage: peak_rss.py WORKER MODEL TOKENS [STREAMS] [-- WORKER_ARGS...]
  TOKENS   prompt length to aim for (the prompt is cut from bench/chat/smollm2-1k.txt; the
           worker's own count is printed)
  STREAMS  that many distinct prompts of that length at once (default 1), 8 tokens each
           (32 with several streams)
Prints one JSON line: prompt tokens per request and VmHWM in bytes."""
import json
import os
import subprocess
import sys

args = sys.argv[1:]
extra = []
if "--" in args:
    i = args.index("--")
    args, extra = args[:i], args[i + 1:]
worker, model, want = args[0], args[1], int(args[2])
streams = int(args[3]) if len(args) > 3 else 1
root = os.path.dirname(os.path.abspath(__file__))
version = next(line.split("=")[1].strip(" ;\n") for line in open(os.path.join(root, "..", "shared", "src", "lib.rs"))
               if "PROTOCOL_VERSION: u32" in line)
text = open(os.path.join(root, "chat", "smollm2-1k.txt")).read()
words = text.split()

p = subprocess.Popen([worker, "--model", model, *extra], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                     stderr=subprocess.DEVNULL, text=True)


def send(msg):
    p.stdin.write(json.dumps(msg) + "\n")
    p.stdin.flush()


def frames():
    for line in p.stdout:
        yield json.loads(line)


send({"type": "hello", "protocol_version": int(version)})
for m in frames():
    if m["type"] == "ready":
        break


def prompt(n, s):
    # About 1.2 tokens per word in this text; each stream starts elsewhere so no prefix is shared.
    ws = words[s * 37:] + words + words
    return f"{s} " + " ".join(ws[: max(1, int(n / 1.2))])


tokens = []
for s in range(streams):
    send({"type": "generate", "id": s + 1, "prompt": prompt(want, s),
          "params": {"temperature": 0, "max_tokens": 8 if streams == 1 else 32, "ignore_eos": True}})
left = streams
for m in frames():
    if m["type"] == "done":
        tokens.append(m["usage"]["prompt_tokens"])
        left -= 1
        if left == 0:
            break
    elif m["type"] == "error":
        sys.exit(f"worker: {m['message']}")
hwm = next(int(line.split()[1]) * 1024 for line in open(f"/proc/{p.pid}/status") if line.startswith("VmHWM:"))
print(json.dumps({"prompt_tokens": tokens, "peak_rss": hwm}))
p.stdin.close()
p.wait()
