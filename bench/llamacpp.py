"""llama.cpp anchor for bench/worker.sh: same GGUF file, prompt, token count and threads."""
import sys, time, statistics, resource
from llama_cpp import Llama

model, prompt, tokens, threads, runs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
llm = Llama(model_path=model, n_threads=threads, n_ctx=2048, verbose=False)
pp, tg = [], []
for _ in range(runs):
    llm.reset()
    t0 = time.perf_counter()
    ids = llm.tokenize(prompt.encode())
    llm.eval(ids)
    t1 = time.perf_counter()
    n = 0
    while n < tokens - 1:
        tok = llm.sample(temp=0.0)
        llm.eval([tok])
        n += 1
    t2 = time.perf_counter()
    pp.append(len(ids) / (t1 - t0)); tg.append(n / (t2 - t1))
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"| llama.cpp (llama-cpp-python, Q4_1) | {statistics.median(pp):.1f} | {statistics.median(tg):.1f} | — | {rss:.0f} |")
