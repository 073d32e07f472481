"""llama.cpp anchor for bench/throughput.sh, through llama-cpp-python's low-level batch API.

Modes (one JSON line on stdout each):
  decode MODEL THREADS STREAMS TOKENS   STREAMS sequences, short prompts read in one batch, then
                                        TOKENS greedy steps, every stream's next token in one
                                        llama_decode (llama.cpp's own batched decoding)
  ttft MODEL THREADS PROMPT_FILE        3 streams decode while a long prompt (the file) is read
                                        in 512-token batches that also carry the 3 decode tokens
  long MODEL THREADS PROMPT_FILE TOKENS one stream: the file as prompt (batches of 512), then
                                        TOKENS greedy steps; THREADS for prompt and decode alike
                                        (llama-cpp-python's high-level Llama uses every core for
                                        prompts unless told, which bench/chat/llamacpp_long.py
                                        does not)
"""
import ctypes
import json
import sys
import time

import llama_cpp as l
import numpy as np

PROMPTS = [
    "The history of the printing press",
    "Once upon a time, in a small village,",
    "My favourite recipe for bread is",
    "Q: What is the capital of France?\nA:",
]


def open_model(path, threads, seqs, n_ctx):
    l.llama_backend_init()
    model = l.llama_model_load_from_file(path.encode(), l.llama_model_default_params())
    p = l.llama_context_default_params()
    p.n_ctx = n_ctx
    p.n_batch = 512
    p.n_ubatch = 512
    p.n_seq_max = seqs
    p.n_threads = threads
    p.n_threads_batch = threads
    ctx = l.llama_init_from_model(model, p)
    vocab = l.llama_model_get_vocab(model)
    return model, ctx, vocab, l.llama_vocab_n_tokens(vocab)


def tokenize(vocab, text, bos=True):
    raw = text.encode()
    buf = (l.llama_token * (len(raw) + 8))()
    n = l.llama_tokenize(vocab, raw, len(raw), buf, len(buf), bos, True)
    return list(buf[:n])


class Batch:
    def __init__(self, cap, seqs):
        self.b = l.llama_batch_init(cap, 0, seqs)
        self.b.n_tokens = 0

    def add(self, tok, pos, seq, logits):
        i = self.b.n_tokens
        self.b.token[i] = tok
        self.b.pos[i] = pos
        self.b.n_seq_id[i] = 1
        self.b.seq_id[i][0] = seq
        self.b.logits[i] = logits
        self.b.n_tokens = i + 1
        return i

    def clear(self):
        self.b.n_tokens = 0


def argmax(ctx, i, n_vocab):
    ptr = l.llama_get_logits_ith(ctx, i)
    return int(np.argmax(np.ctypeslib.as_array(ptr, shape=(n_vocab,))))


def decode_mode(path, threads, streams, tokens):
    model, ctx, vocab, n_vocab = open_model(path, threads, streams, 512 * streams)
    batch = Batch(512, streams)
    prompts = [tokenize(vocab, PROMPTS[s % 4]) for s in range(streams)]
    rows = {}
    for s, ids in enumerate(prompts):
        for j, t in enumerate(ids):
            r = batch.add(t, j, s, j == len(ids) - 1)
            if j == len(ids) - 1:
                rows[s] = r
    l.llama_decode(ctx, batch.b)
    nxt = {s: argmax(ctx, rows[s], n_vocab) for s in range(streams)}
    pos = {s: len(prompts[s]) for s in range(streams)}
    t0 = time.perf_counter()
    for _ in range(tokens - 1):
        batch.clear()
        for s in range(streams):
            rows[s] = batch.add(nxt[s], pos[s], s, True)
            pos[s] += 1
        l.llama_decode(ctx, batch.b)
        nxt = {s: argmax(ctx, rows[s], n_vocab) for s in range(streams)}
    dt = time.perf_counter() - t0
    print(json.dumps({"engine": "llama.cpp", "streams": streams,
                      "aggregate_tps": streams * (tokens - 1) / dt}))


def ttft_mode(path, threads, prompt_file):
    model, ctx, vocab, n_vocab = open_model(path, threads, 4, 8192)
    batch = Batch(512, 4)
    prompts = [tokenize(vocab, PROMPTS[s]) for s in range(3)]
    rows, pos = {}, {}
    for s, ids in enumerate(prompts):
        for j, t in enumerate(ids):
            r = batch.add(t, j, s, j == len(ids) - 1)
        rows[s], pos[s] = r, len(ids)
    l.llama_decode(ctx, batch.b)
    nxt = {s: argmax(ctx, rows[s], n_vocab) for s in range(3)}
    long = tokenize(vocab, open(prompt_file).read())
    # Warm steady decoding first, as the rbee run does.
    for _ in range(8):
        batch.clear()
        for s in range(3):
            rows[s] = batch.add(nxt[s], pos[s], s, True)
            pos[s] += 1
        l.llama_decode(ctx, batch.b)
        nxt = {s: argmax(ctx, rows[s], n_vocab) for s in range(3)}
    t0 = time.perf_counter()
    done, decoded = 0, 0
    while done < len(long):
        batch.clear()
        for s in range(3):
            rows[s] = batch.add(nxt[s], pos[s], s, True)
            pos[s] += 1
        take = min(512 - 3, len(long) - done)
        for j in range(take):
            last = done + j == len(long) - 1
            r = batch.add(long[done + j], done + j, 3, last)
        done += take
        l.llama_decode(ctx, batch.b)
        nxt = {s: argmax(ctx, rows[s], n_vocab) for s in range(3)}
        decoded += 3
    argmax(ctx, r, n_vocab)
    dt = time.perf_counter() - t0
    print(json.dumps({"engine": "llama.cpp", "prompt_tokens": len(long), "ttft_ms": dt * 1e3,
                      "others_tps": decoded / dt / 3}))


def long_mode(path, threads, prompt_file, tokens):
    model, ctx, vocab, n_vocab = open_model(path, threads, 1, 4096)
    batch = Batch(512, 1)
    ids = tokenize(vocab, open(prompt_file).read())
    t0 = time.perf_counter()
    for start in range(0, len(ids), 512):
        batch.clear()
        part = ids[start:start + 512]
        for j, t in enumerate(part):
            r = batch.add(t, start + j, 0, start + j == len(ids) - 1)
        l.llama_decode(ctx, batch.b)
    tok = argmax(ctx, r, n_vocab)
    t1 = time.perf_counter()
    pos = len(ids)
    for _ in range(tokens - 1):
        batch.clear()
        batch.add(tok, pos, 0, True)
        pos += 1
        l.llama_decode(ctx, batch.b)
        tok = argmax(ctx, 0, n_vocab)
    t2 = time.perf_counter()
    print(json.dumps({"engine": "llama.cpp", "prompt_tokens": len(ids),
                      "prompt_tps": len(ids) / (t1 - t0), "ttft_ms": (t1 - t0) * 1e3,
                      "decode_tps": (tokens - 1) / (t2 - t1)}))


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "decode":
        decode_mode(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
    elif mode == "long":
        long_mode(sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]))
    else:
        ttft_mode(sys.argv[2], int(sys.argv[3]), sys.argv[4])
