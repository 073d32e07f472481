import sys, json, numpy as np
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_threads=2, n_ctx=512, verbose=False, logits_all=True)
out = []
for prompt in ["The capital of France is", "Once upon a time, there was a little bee who"]:
    llm.reset()
    ids = llm.tokenize(prompt.encode())
    n0 = len(ids)
    llm.eval(ids)
    steps = []
    for s in range(16):
        l = np.array(llm.scores[llm.n_tokens - 1])
        top = np.argsort(-l)[:5]
        steps.append({"top": [int(t) for t in top], "logits": [round(float(l[t]), 3) for t in top]})
        llm.eval([int(top[0])])
    out.append({"prompt": prompt, "ids": ids, "steps": steps})
print(json.dumps(out))
