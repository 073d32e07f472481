"""llama.cpp anchor for bench/chat.sh: a long prompt (special tokens parsed, BOS added), then TOKENS greedy steps."""
import sys, time
from llama_cpp import Llama
model, path, tokens, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
text = open(path).read()
llm = Llama(model_path=model, n_threads=threads, n_ctx=2048, verbose=False)
ids = llm.tokenize(text.encode(), add_bos=True, special=True)
t0 = time.perf_counter(); llm.eval(ids); t1 = time.perf_counter()
tok = llm.sample(temp=0.0); t_first = time.perf_counter()
n = 1
while n < tokens:
    llm.eval([tok]); tok = llm.sample(temp=0.0); n += 1
t2 = time.perf_counter()
print(f"llama.cpp prompt_tokens={len(ids)} prompt_tps={len(ids)/(t1-t0):.1f} ttft_ms={(t_first-t0)*1e3:.0f} decode_tps={(n-1)/(t2-t_first):.1f}")
