"""Where the batch-1 GPU time goes: kernel launches and ops per forward, ours vs official (same checkpoint)."""

from __future__ import annotations

import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

system, path = sys.argv[1], sys.argv[2]
text = " ".join(["the movie was good but the service in the hotel was bad"] * 40)
labels = [f"topic {i}" for i in range(8)]
if system == "ours":
    sys.path.insert(0, ".")
    from gliclass.pipeline import ZeroShotPipeline

    pipe = ZeroShotPipeline.from_pretrained(path, device="cuda", batch_size=1)
    batch = {k: v.to("cuda") for k, v in pipe.processor([text], [labels]).items()}
    model = pipe.model
    print("attn", model.config._attn_implementation, model.model.encoder_model.config._attn_implementation)

    def forward():
        return model(**batch)
else:
    from transformers import AutoTokenizer

    from gliclass import GLiClassModel, ZeroShotClassificationPipeline

    tok = AutoTokenizer.from_pretrained(path)
    model = GLiClassModel.from_pretrained(path).to("cuda").eval()
    pipe = ZeroShotClassificationPipeline(model, tok, classification_type="multi-label", device="cuda:0")
    batch = pipe.pipe.prepare_inputs([text], labels, same_labels=True)
    print("attn", model.config._attn_implementation, model.model.encoder_model.config._attn_implementation)

    def forward():
        return model(**batch, max_num_classes=len(labels))


print({k: (tuple(v.shape), v.dtype) for k, v in batch.items()}, next(model.parameters()).dtype, model.training)
with torch.inference_mode():
    for _ in range(5):
        forward()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(20):
        forward()
    torch.cuda.synchronize()
    print(system, "forward ms", (time.perf_counter() - t) / 20 * 1000)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        forward()
        torch.cuda.synchronize()
table = prof.key_averages().table(sort_by="cpu_time_total", row_limit=25)
print(table)
kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
print(system, "cuda kernels per forward:", len(kernels))
